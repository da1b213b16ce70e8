"""Packaging: every package folder is installed, kernels/ lands as gpukb.kernels."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _listed_packages():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(config["tool"]["setuptools"]["packages"]), config


def test_every_package_folder_is_listed_in_pyproject():
    listed, _ = _listed_packages()
    found = set()
    for top, name in (("gpukb", "gpukb"), ("kernels", "gpukb.kernels")):
        for init in (ROOT / top).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *relative.parts]) if relative.parts else name)
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == set(), "pyproject.toml lists packages that do not exist"


def test_kernels_are_installed_as_a_subpackage():
    import gpukb.kernels

    assert pathlib.Path(gpukb.kernels.__file__).parent.name == "kernels"
    _, config = _listed_packages()
    assert config["tool"]["setuptools"]["package-dir"]["gpukb.kernels"] == "kernels"


def test_builtin_backends_are_entry_points():
    from importlib import metadata

    eps = {ep.name: ep.value for ep in metadata.entry_points(group="gpukb.backends")
           if ep.dist is not None and ep.dist.name == "gpukb"}
    assert eps == {"cpu": "gpukb.backends.cpu:CPUBackend", "cuda": "gpukb.backends.cuda:CUDABackend"}
