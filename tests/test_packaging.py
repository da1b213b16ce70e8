"""Packaging: every package folder is installed, kernels/ lands as gpukb.kernels, and the sdist
and wheel ship the licence, the py.typed marker and the metadata ``pip show`` reads."""

import email
import hashlib
import importlib.metadata
import importlib.resources
import pathlib
import shutil
import subprocess
import sys
import tarfile
import zipfile

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


# The MD5 by which packagers know the unmodified text of https://www.apache.org/licenses/LICENSE-2.0.txt.
APACHE_2_0_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def test_license_is_the_unmodified_apache_2_0_text():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply" in text
    assert hashlib.md5((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_0_MD5


def test_py_typed_marker_is_in_the_installed_package():
    assert importlib.resources.files("gpukb").joinpath("py.typed").is_file()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The sdist, and the wheel built from it (as pip builds one from PyPI), of a copy of the
    sources: building never writes into the checkout."""
    tmp = tmp_path_factory.mktemp("build")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc")
    for folder in ("gpukb", "kernels"):
        shutil.copytree(ROOT / folder, source / folder, ignore=skip)
    command = [sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(source)]
    if int(importlib.metadata.version("setuptools").split(".")[0]) >= 77:
        command.insert(3, "--no-isolation")  # the installed setuptools can build it: no download
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = (tmp / "dist").glob("gpukb-*.tar.gz")
    (wheel,) = (tmp / "dist").glob("gpukb-*.whl")
    return sdist, wheel


def test_wheel_ships_license_and_py_typed(built):
    _, wheel = built
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "gpukb/py.typed" in names
        licenses = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert len(licenses) == 1, sorted(names)
        assert archive.read(licenses[0]) == (ROOT / "LICENSE").read_bytes()


def test_sdist_ships_license_and_py_typed(built):
    sdist, _ = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "gpukb/py.typed"} <= names


def test_wheel_metadata_names_license_authors_and_classifiers(built):
    _, wheel = built
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(name))
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["Author"] == metadata["Maintainer"] == "The gpukb developers"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    assert metadata["Keywords"]
    # Numba compiles `@` in a jit_step with SciPy's BLAS: a base dependency, though gpukb never
    # imports SciPy itself.
    assert "scipy>=1.9" in metadata.get_all("Requires-Dist")
    assert "peers" in metadata.get_all("Provides-Extra")
