"""``warn_user``: a warning shown at the user's line, not at the gpukb line that raised it."""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

_HERE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _skipped_by_warnings(filename: str) -> bool:
    """Frames that warnings.warn passes over without counting them (importlib's machinery)."""
    return "importlib" in filename and "_bootstrap" in filename


def _inside_gpukb(filename: str) -> bool:
    kernels = sys.modules.get("gpukb.kernels")  # installed as gpukb/kernels, or a clone's kernels/
    prefixes = [_HERE] + [os.path.join(p, "") for p in getattr(kernels, "__path__", ())]
    return os.path.abspath(filename).startswith(tuple(prefixes))


def warn_user(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn`` attributed to the innermost caller outside gpukb (and its kernels)."""
    frame: FrameType | None = sys._getframe(1)  # warn_user's caller: stacklevel 2
    level = 2
    while frame is not None and _inside_gpukb(frame.f_code.co_filename):
        frame = frame.f_back
        while frame is not None and _skipped_by_warnings(frame.f_code.co_filename):
            frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
