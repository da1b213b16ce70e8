"""Session state: floatx, epsilon, image data format, uids, clear_session, and the config file.

Everything a gpukb session remembers lives here, so that there is one place to read it and one
place to reset it.

- ``floatx``, ``epsilon`` and ``image_data_format`` are process-wide and survive ``clear_session``.
  Their starting values come from the defaults, then the config file ``gpukb.json`` in
  ``$GPUKB_HOME`` (default ``~/.gpukb``), then the ``GPUKB_*`` environment variables. A bad file or
  value warns once, naming the file (or variable) and key, and the value in effect is kept: reading
  the configuration never raises or blocks, so it can never break ``import gpukb``. The warnings
  point at the user's ``import gpukb`` line. The ``backend`` name is checked later, at discovery
  (``gpukb._dispatch``): import never reads entry points.
- uid counters are per thread (as in Keras); ``reset_uids`` clears them for every thread by bumping a
  generation number that each thread compares with its own on its next ``get_uid``.
- ``clear_session`` resets the uids and calls the hooks that backends register with
  ``register_clear_session_hook`` (the dispatcher registers one that reaches every loaded backend);
  it runs ``gc.collect()`` only when a hook released something.
"""

from __future__ import annotations

import gc
import json
import math
import numbers
import os
import reprlib
import stat
import threading
from typing import Any, Callable

import numpy as np

from ._warn import warn_user

FLOATX_CHOICES = ("float16", "float32", "float64")
IMAGE_DATA_FORMAT_CHOICES = ("channels_last", "channels_first")
CONFIG_FILENAME = "gpukb.json"
CONFIG_KEYS = ("floatx", "epsilon", "image_data_format", "backend")

_DEFAULTS = {
    "floatx": "float32",
    "epsilon": 1e-07,
    "image_data_format": "channels_last",
    "backend": None,
}


# --------------------------------------------------------------------------------------------
# Validators: each returns the stored form of a value or raises ValueError naming what it wanted.
# --------------------------------------------------------------------------------------------

def _choices_text(choices) -> str:
    return ", ".join(repr(c) for c in choices)


def _shown(value: Any) -> str:
    """A short repr for messages: a 400-digit number or a huge config string would drown them."""
    try:
        return reprlib.repr(value)
    except ValueError:  # an int past Python's int-to-str digit limit
        return f"<{type(value).__name__} too large to print>"


def standardize_floatx(value: Any) -> str:
    """Return the canonical floatx name of ``value`` ('float16', 'float32' or 'float64')."""
    if isinstance(value, str):
        if value in FLOATX_CHOICES:
            return value
    elif isinstance(value, (np.dtype, type)) and not (
        isinstance(value, type) and issubclass(value, (bool, np.bool_))
    ):
        try:
            name = np.dtype(value).name
        except TypeError:
            name = None
        if name in FLOATX_CHOICES:
            return name
    raise ValueError(
        f"Unknown floatx {_shown(value)}: expected one of {_choices_text(FLOATX_CHOICES)} "
        "(or the equivalent NumPy dtype or type)."
    )


def standardize_epsilon(value: Any) -> float:
    """Return ``value`` as a float if it is a positive finite real number."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        try:
            result = float(value)
        except OverflowError:  # an int too large for a float, e.g. 10**400
            result = math.inf
        if math.isfinite(result) and result > 0:
            return result
    raise ValueError(f"Invalid epsilon {_shown(value)}: expected a positive finite real number.")


def standardize_image_data_format(value: Any) -> str:
    """Return the lowercase data format name; the match is case-insensitive."""
    if isinstance(value, str) and value.lower() in IMAGE_DATA_FORMAT_CHOICES:
        return value.lower()
    raise ValueError(
        f"Unknown image_data_format {_shown(value)}: expected one of "
        f"{_choices_text(IMAGE_DATA_FORMAT_CHOICES)} (case-insensitive)."
    )


def standardize_backend_name(value: Any) -> str:
    """Backend names are checked against the installed backends later, by the dispatcher."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"Invalid backend {_shown(value)}: expected a backend name such as 'cpu' or 'cuda'.")


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "floatx": standardize_floatx,
    "epsilon": standardize_epsilon,
    "image_data_format": standardize_image_data_format,
    "backend": standardize_backend_name,
}


# --------------------------------------------------------------------------------------------
# Process-wide settings
# --------------------------------------------------------------------------------------------

_settings: dict[str, Any] = dict(_DEFAULTS)
# Where each setting came from: "default", a config file path, or an environment variable name.
_sources: dict[str, str] = {key: "default" for key in _DEFAULTS}
_config_file_used: str | None = None


def floatx() -> str:
    """The default float type name, e.g. ``'float32'``."""
    return _settings["floatx"]


def set_floatx(value: str | np.dtype[Any] | type) -> None:
    """Set the default float type: 'float16', 'float32' or 'float64' (or its NumPy dtype/type)."""
    _settings["floatx"] = standardize_floatx(value)
    _sources["floatx"] = "set_floatx()"


def epsilon() -> float:
    """The fuzz factor used in numeric expressions (default ``1e-07``)."""
    return _settings["epsilon"]


def set_epsilon(value: float | np.floating[Any] | np.integer[Any]) -> None:
    """Set the fuzz factor: a positive finite real number, stored as a float."""
    _settings["epsilon"] = standardize_epsilon(value)
    _sources["epsilon"] = "set_epsilon()"


def image_data_format() -> str:
    """The default image layout: ``'channels_last'`` or ``'channels_first'``."""
    return _settings["image_data_format"]


def set_image_data_format(value: str) -> None:
    """Set the default image layout (case-insensitive, stored lowercase)."""
    _settings["image_data_format"] = standardize_image_data_format(value)
    _sources["image_data_format"] = "set_image_data_format()"


def configured_backend() -> str | None:
    """The backend named by the config file or ``GPUKB_BACKEND``, or None."""
    return _settings["backend"]


def configured_backend_origin() -> str:
    """Where the configured backend came from, in words: the variable or the config file."""
    source = _sources["backend"]
    if source.startswith("$"):
        return f"the environment variable {source[1:]}"
    return f"the 'backend' key of the config file {source}"


def settings_report() -> list[tuple[str, Any, str]]:
    """(key, value, source) for every setting, for ``gpukb info``."""
    return [(key, _settings[key], _sources[key]) for key in CONFIG_KEYS]


# --------------------------------------------------------------------------------------------
# Config file and environment variables
# --------------------------------------------------------------------------------------------

def config_dir() -> str:
    """The folder holding ``gpukb.json``: ``$GPUKB_HOME`` if set, else ``~/.gpukb``."""
    home = os.environ.get("GPUKB_HOME")
    if home:
        return os.path.abspath(os.path.expanduser(home))
    return os.path.join(os.path.expanduser("~"), ".gpukb")


def config_path() -> str:
    return os.path.join(config_dir(), CONFIG_FILENAME)


def config_file_in_use() -> str | None:
    """The config file that was read at import, or None when there was none."""
    return _config_file_used


CONFIG_MAX_BYTES = 1 << 20  # a config file is a few lines; anything larger is a mistake


def _warn_config(message: str) -> None:
    warn_user(message)  # shown at the user's ``import gpukb``, not at this file


def _not_regular_file(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _read_config_file(path: str) -> tuple[dict[str, Any], bool]:
    """(the settings in ``path``, whether a regular file is there). Never raises, never blocks."""
    try:
        info = os.stat(path)  # the type first: reading a FIFO would wait for a writer forever
    except FileNotFoundError:
        if os.path.islink(path):
            _warn_config(f"gpukb: ignoring config file {path}: it is a broken symbolic link.")
        return {}, False
    except OSError as error:
        _warn_config(f"gpukb: ignoring config file {path}: {error}.")
        return {}, False
    if not stat.S_ISREG(info.st_mode):
        _warn_config(f"gpukb: ignoring config file {path}: it is {_not_regular_file(info.st_mode)}.")
        return {}, False
    try:
        # O_NONBLOCK: should a FIFO replace the file after the stat, the read fails instead of waiting.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(descriptor, "rb") as handle:
            raw = handle.read(CONFIG_MAX_BYTES + 1)
        if len(raw) > CONFIG_MAX_BYTES:
            _warn_config(f"gpukb: ignoring config file {path}: it is larger than "
                         f"{CONFIG_MAX_BYTES} bytes.")
            return {}, True
        data = json.loads(raw.decode("utf-8"))
    # ValueError: JSON and Unicode errors, and ints past Python's digit limit; RecursionError: deep nesting
    except (OSError, ValueError, RecursionError) as error:
        _warn_config(f"gpukb: ignoring config file {path}: it could not be read as JSON "
                     f"({type(error).__name__}: {error}).")
        return {}, True
    if not isinstance(data, dict):
        _warn_config(
            f"gpukb: ignoring config file {path}: expected a JSON object, got {type(data).__name__}."
        )
        return {}, True
    return data, True


def load_config() -> None:
    """(Re)read the config file and environment variables into the settings.

    Called once at import. Never raises: each bad value warns and leaves the value in effect.
    """
    global _config_file_used
    _settings.update(_DEFAULTS)
    _sources.update({key: "default" for key in _DEFAULTS})
    path = config_path()
    data, found = _read_config_file(path)
    _config_file_used = path if found else None
    for key, raw in data.items():
        if key not in _VALIDATORS:
            _warn_config(
                f"gpukb: config file {path}: unknown key {_shown(key)} ignored "
                f"(known keys: {_choices_text(CONFIG_KEYS)})."
            )
            continue
        try:
            _settings[key] = _VALIDATORS[key](raw)
            _sources[key] = path
        except ValueError as error:
            _warn_config(f"gpukb: config file {path}: key {key!r} ignored: {error}")
    for key in CONFIG_KEYS:
        variable = "GPUKB_" + key.upper()
        raw = os.environ.get(variable)
        if raw is None:
            continue
        try:
            value = float(raw) if key == "epsilon" else raw
        except ValueError:
            value = raw  # let the validator produce the message
        try:
            _settings[key] = _VALIDATORS[key](value)
            _sources[key] = "$" + variable
        except ValueError as error:
            _warn_config(f"gpukb: environment variable {variable} ignored: {error}")


# --------------------------------------------------------------------------------------------
# uids
# --------------------------------------------------------------------------------------------

_uid_local = threading.local()
_uid_generation = 0
_uid_lock = threading.Lock()


def get_uid(prefix: str = "") -> int:
    """Return the next id for ``prefix`` in this thread, starting at 1."""
    if not isinstance(prefix, str):
        raise TypeError(f"get_uid: prefix must be a str, got {type(prefix).__name__}.")
    local = _uid_local
    if getattr(local, "generation", None) != _uid_generation:
        local.generation = _uid_generation
        local.counters = {}
    counters = local.counters
    counters[prefix] = counters.get(prefix, 0) + 1
    return counters[prefix]


def reset_uids() -> None:
    """Reset the uid counters of every thread."""
    global _uid_generation
    with _uid_lock:
        _uid_generation += 1


# --------------------------------------------------------------------------------------------
# clear_session
# --------------------------------------------------------------------------------------------

ClearSessionHook = Callable[[], bool | None]
_clear_session_hooks: list[ClearSessionHook] = []


def register_clear_session_hook(hook: ClearSessionHook) -> ClearSessionHook:
    """Have ``clear_session(free_memory=True)`` call ``hook()``; returns the hook (decorator use).

    The hook returns False when it had nothing to release; anything else (True, None) makes
    ``clear_session`` run ``gc.collect()`` afterwards."""
    if not callable(hook):
        raise TypeError(f"register_clear_session_hook: expected a callable, got {hook!r}.")
    if hook not in _clear_session_hooks:
        _clear_session_hooks.append(hook)
    return hook


def unregister_clear_session_hook(hook: ClearSessionHook) -> None:
    if hook in _clear_session_hooks:
        _clear_session_hooks.remove(hook)


def clear_session(free_memory: bool = True) -> None:
    """Reset the session: uid counters of every thread; with ``free_memory`` also ask every
    registered hook (the loaded backends) to release its caches, then run ``gc.collect()`` unless
    every hook reported that it had nothing to release (a full collection costs tens of ms in a
    large process, which adds up when clear_session runs in a loop).

    floatx, epsilon and image_data_format are process-wide and are not changed.
    """
    reset_uids()
    if free_memory:
        released = [hook() for hook in list(_clear_session_hooks)]
        if any(result is not False for result in released):
            gc.collect()


load_config()
