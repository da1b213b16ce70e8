"""Running from the root of a clone: the top-level ``kernels/`` folder is ``gpukb.kernels``.

Installed (normally or in editable mode), ``kernels/`` is mapped to ``gpukb.kernels`` by the
packaging. But Python puts the working folder first on ``sys.path``, so in a clone's root
``import gpukb`` finds the checkout's ``gpukb/``, which has no ``kernels/`` inside. This finder,
added only in that case, maps ``gpukb.kernels`` to the ``kernels/`` beside the ``gpukb/`` being
imported (ahead of an editable install's mapping, which may name another clone); its subpackages
are then found through ``gpukb.kernels.__path__`` as usual.
"""

from __future__ import annotations

import importlib.util
import os
import sys


class _CloneKernelsFinder:
    """A meta path finder for the one name ``gpukb.kernels``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "gpukb.kernels":
            return None
        return importlib.util.spec_from_file_location(
            fullname, os.path.join(self.folder, "__init__.py"),
            submodule_search_locations=[self.folder])


def map_clone_kernels(package_dir: str) -> None:
    """Add the finder when ``package_dir`` (gpukb's folder) sits in a clone beside ``kernels/``."""
    if os.path.isdir(os.path.join(package_dir, "kernels")):
        return  # an installed layout: gpukb/kernels exists
    folder = os.path.join(os.path.dirname(package_dir), "kernels")
    if not os.path.isfile(os.path.join(folder, "__init__.py")):
        return
    if not any(isinstance(f, _CloneKernelsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CloneKernelsFinder(folder))
