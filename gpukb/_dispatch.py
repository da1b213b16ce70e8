"""The dispatcher: finds backends through entry points and picks one for each call.

Discovery
  Every backend, the built-in ``cpu`` and ``cuda`` included, is an entry point in the group
  ``gpukb.backends`` (``name = "package.module:BackendClass"``). Discovery runs on first need
  (a dispatch, ``list_backends``, ``get_backend``), is cached, and ``refresh_backends`` redoes it.
  An entry point that fails to load, is not a ``gpukb.Backend`` subclass, whose name disagrees with
  its class, whose constructor raises, or whose ``is_available`` raises is skipped with ONE warning
  naming the entry point, its distribution and the error. Nothing here runs at ``import gpukb``.

Selection, first match wins
  1. the ``backend=`` keyword of the call;
  2. the innermost ``use_backend(name)`` block (a ``contextvars`` variable: local to the thread and
     the async task);
  3. ``set_backend(name)`` (``set_backend(None)``: automatic selection, whatever is configured),
     else ``GPUKB_BACKEND`` / the config file's ``backend``. Those are checked at discovery, not
     at import (which never reads entry points): an unknown name warns once and is ignored;
  4. the array type of the inputs: a built-in backend (from the ``gpukb`` distribution) that accepts
     the type always wins automatic selection for it, so installing a plugin never changes who
     handles NumPy or CuPy arrays; plugins compete, by ``priority``, for the types no built-in
     backend accepts (e.g. ``torch:Tensor``). To send NumPy arrays to a plugin, select it with
     1, 2 or 3.
  Arrays of two libraries in one call are a TypeError naming both, unless a backend takes them
  together: some of its own ``array_types``, the rest its ``companion_types`` (the dask plugin
  takes NumPy states next to Dask inputs); such a call goes to that backend, chosen as above. A backend chosen by 1-3 must
  accept the arrays given (TypeError otherwise). Unknown names are a ValueError listing the known
  ones; a known backend that is unavailable is a RuntimeError with the reason and what to install.
  ``backend_available(name)`` answers the same question without raising, and
  ``get_backend(name, check_available=False)`` gives an unavailable backend (to set its options).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from . import _state
from ._backend import Availability, Backend, resolve_array_type
from ._warn import warn_user

ENTRY_POINT_GROUP = "gpukb.backends"
BUILTIN_DISTRIBUTION = "gpukb"


@dataclass
class BackendRecord:
    """One discovered backend: where it came from, its instance, and whether it can run here."""

    name: str
    entry_point: str          # "package.module:Class"
    distribution: str         # the distribution that registered it
    backend: Backend
    availability: Availability

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION


_registry: dict[str, BackendRecord] | None = None
_registry_lock = threading.RLock()
_process_default: str | None = None
# False until set_backend is called: only then does set_backend(None) override the configuration.
_process_default_chosen = False
_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gpukb_backend", default=None
)


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------

def _distribution_name(entry_point) -> str:
    dist = getattr(entry_point, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return name or "<unknown distribution>"


def _skip(entry_point, distribution: str, error: str) -> None:
    warn_user(
        f"gpukb: skipping backend entry point {entry_point.name!r} = {entry_point.value!r} "
        f"(distribution {distribution!r}): {error}"
    )


def _load_record(entry_point, distribution: str) -> BackendRecord | None:
    try:
        cls = entry_point.load()
    except BaseException as error:  # a broken plugin must never break gpukb
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        _skip(entry_point, distribution, f"it failed to load: {type(error).__name__}: {error}")
        return None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        _skip(entry_point, distribution, f"{cls!r} is not a subclass of gpukb.Backend")
        return None
    if cls.name != entry_point.name:
        _skip(entry_point, distribution,
              f"the class's name {cls.name!r} differs from the entry point's name {entry_point.name!r}")
        return None
    try:
        backend = cls()
        availability = Availability.coerce(backend.is_available())
    except Exception as error:
        _skip(entry_point, distribution, f"{type(error).__name__}: {error}")
        return None
    return BackendRecord(entry_point.name, entry_point.value, distribution, backend, availability)


def _distribution_names(entry_points) -> dict[int, str]:
    """{id(entry point): its distribution's name}, each distribution's name read once (reading it
    parses the distribution's whole METADATA file)."""
    by_distribution: dict[int, str] = {}
    names = {}
    for entry_point in entry_points:
        dist = getattr(entry_point, "dist", None)
        if dist is None:
            names[id(entry_point)] = _distribution_name(entry_point)
            continue
        if id(dist) not in by_distribution:
            by_distribution[id(dist)] = _distribution_name(entry_point)
        names[id(entry_point)] = by_distribution[id(dist)]
    return names


def _discover() -> dict[str, BackendRecord]:
    from importlib import metadata  # tens of ms: loaded at the first discovery, not at import

    records: dict[str, BackendRecord] = {}
    found = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    distribution = _distribution_names(found)
    entry_points = sorted(
        found,
        # built-in first, so a plugin can never shadow 'cpu' or 'cuda'
        key=lambda ep: (distribution[id(ep)] != BUILTIN_DISTRIBUTION, ep.name),
    )
    for entry_point in entry_points:
        if entry_point.name in records:
            first = records[entry_point.name]
            if first.entry_point == entry_point.value:
                continue  # the same distribution seen twice on sys.path
            _skip(entry_point, distribution[id(entry_point)],
                  f"the name {entry_point.name!r} is already taken by {first.entry_point!r} "
                  f"(distribution {first.distribution!r})")
            continue
        record = _load_record(entry_point, distribution[id(entry_point)])
        if record is not None:
            records[record.name] = record
            _state.register_clear_session_hook(_clear_loaded_backends)
    return records


def _records() -> dict[str, BackendRecord]:
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = _discover()
            _warn_if_configured_backend_unknown(_registry)
        return _registry


def _known_names(records) -> str:
    return ", ".join(repr(n) for n in sorted(records)) or "none"


def _warn_if_configured_backend_unknown(records: dict[str, BackendRecord]) -> None:
    """GPUKB_BACKEND and the config file's ``backend`` are checked here, at discovery, because
    ``import gpukb`` never reads entry points. An unknown name is a bad configuration value: it
    warns (once per discovery) and is ignored, as bad values of the other keys are."""
    name = _state.configured_backend()
    if name is not None and name not in records:
        warn_user(
            f"gpukb: {_state.configured_backend_origin()} names the backend {name!r}, which is "
            f"not installed (known backends: {_known_names(records)}); it is ignored and "
            "automatic selection applies."
        )


def refresh_backends() -> list[str]:
    """Forget the discovered backends and discover them again; returns ``list_backends()``."""
    global _registry
    with _registry_lock:
        _registry = None
    return list_backends()


def list_backends() -> list[str]:
    """Names of the discovered, loadable backends (available or not), sorted."""
    return sorted(_records())


def backend_records() -> list[BackendRecord]:
    """Every discovered backend with its availability, for ``gpukb info``."""
    return [record for _, record in sorted(_records().items())]


def _clear_loaded_backends() -> bool:
    """Every loaded backend's ``on_clear_session``; False when none had anything to release."""
    registry = _registry
    if registry is None:
        return False
    released = [record.backend.on_clear_session() for record in registry.values()]
    return any(result is not False for result in released)  # None: a plugin that does not say


# --------------------------------------------------------------------------------------------
# Names and defaults
# --------------------------------------------------------------------------------------------

def _known_record(name: Any, *, origin: str) -> BackendRecord:
    """The record of backend ``name``, available or not; TypeError/ValueError for bad names."""
    if isinstance(name, Backend):
        name = name.name
    if not isinstance(name, str):
        raise TypeError(f"{origin}: a backend name must be a str, got {type(name).__name__} {name!r}.")
    records = _records()
    if name not in records:
        raise ValueError(f"{origin}: unknown backend {name!r}; known backends: {_known_names(records)}.")
    return records[name]


def _availability_with_hint(record: BackendRecord) -> Availability:
    """The record's availability, its reason followed by what to install when it is unavailable."""
    availability, hint = record.availability, record.backend.install_hint
    if availability or not hint:
        return availability
    return Availability(False, f"{availability.reason}. {hint}")


def _record_for(name: Any, *, origin: str) -> BackendRecord:
    record = _known_record(name, origin=origin)
    availability = _availability_with_hint(record)
    if not availability:
        raise RuntimeError(f"{origin}: backend {record.name!r} is not available: {availability.reason}")
    return record


def backend_available(name: str) -> Availability:
    """Whether backend ``name`` can run here, without raising: a truthy ``Availability``, or a
    falsy one whose ``reason`` says why not and what to install. Checked at discovery;
    ``refresh_backends()`` checks again. An unknown name is a ValueError listing the known ones."""
    return _availability_with_hint(_known_record(name, origin="backend_available"))


def get_backend(name: str | None = None, *, check_available: bool = True) -> Backend:
    """The backend instance called ``name``; with no name, the current default: the innermost
    ``use_backend``, else ``set_backend``/``GPUKB_BACKEND``/config, else ``'cpu'``.

    An unavailable backend is a RuntimeError unless ``check_available=False``, which returns it
    anyway so that its options can be read and set (running it still raises the RuntimeError)."""
    if not isinstance(check_available, bool):
        raise TypeError(f"get_backend: check_available must be True or False, got {check_available!r}.")
    if name is None:
        name = _explicit_default()[0] or "cpu"
    lookup = _record_for if check_available else _known_record
    return lookup(name, origin="get_backend").backend


def set_backend(name: str | None) -> None:
    """Make ``name`` the process-wide default backend. None means automatic selection by array
    type, overriding ``GPUKB_BACKEND`` and the config file's ``backend``."""
    global _process_default, _process_default_chosen
    if name is not None:
        name = _record_for(name, origin="set_backend").name
    _process_default, _process_default_chosen = name, True


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Use backend ``name`` inside the block, in this thread / async task only."""
    _record_for(name, origin="use_backend")
    token = _context_backend.set(name.name if isinstance(name, Backend) else name)
    try:
        yield get_backend(_context_backend.get())
    finally:
        _context_backend.reset(token)


def _explicit_default() -> tuple[str | None, str]:
    """(name, where it was chosen) from rules 2 and 3, or (None, '')."""
    name = _context_backend.get()
    if name is not None:
        return name, "use_backend"
    if _process_default_chosen:
        return _process_default, ("set_backend" if _process_default is not None else "")
    configured = _state.configured_backend()
    if configured is not None and configured in _records():  # an unknown one warned at discovery
        return configured, _state.configured_backend_origin()
    return None, ""


# --------------------------------------------------------------------------------------------
# Selection by array type
# --------------------------------------------------------------------------------------------

def _claims(records) -> list[tuple[str, type]]:
    """(claim string, class) for every claimed array type whose library is imported."""
    seen = {}
    for record in records:
        for spec in record.backend.array_types + tuple(record.backend.companion_types):
            if spec not in seen:
                cls = resolve_array_type(spec)
                if cls is not None:
                    seen[spec] = cls
    return list(seen.items())


# (registry, its claimed modules' names, those modules as last seen, the claims then, whether
# every claimed type of an imported module resolved): ``_claims`` re-resolves every spec, a
# fifth of a small call's dispatch, yet its answer only changes with the registry or with which
# of the claimed modules are imported (a library imported after the first call, or removed from
# sys.modules and imported again, is a new module object).
_claims_cache: tuple | None = None


def _current_claims(registry: dict[str, BackendRecord]) -> list[tuple[str, type]]:
    """``_claims`` of ``registry``'s records, resolved again only when the registry or the
    claimed modules in ``sys.modules`` changed."""
    global _claims_cache
    cache = _claims_cache
    if cache is not None and cache[0] is registry:
        modules = tuple(map(sys.modules.get, cache[1]))
        if cache[4] and modules == cache[2]:
            return cache[3]
        names = cache[1]
    else:
        names = tuple(dict.fromkeys(
            _library(spec) for record in registry.values()
            for spec in record.backend.array_types + tuple(record.backend.companion_types)))
        modules = tuple(map(sys.modules.get, names))
    claims = _claims(registry.values())
    resolved = {spec for spec, _ in claims}
    # A module still being imported may not define its class yet: such claims are not kept.
    complete = all(spec in resolved or sys.modules.get(_library(spec)) is None
                   for record in registry.values()
                   for spec in record.backend.array_types + tuple(record.backend.companion_types))
    _claims_cache = (registry, names, modules, claims, complete)
    return claims


def array_kinds(leaves) -> list[str]:
    """The distinct claimed array types (``"module:QualName"``) among ``leaves``, in order seen."""
    claims = _current_claims(_records())
    kinds: list[str] = []
    for leaf in leaves:
        for spec, cls in claims:
            if isinstance(leaf, cls):
                if spec not in kinds:
                    kinds.append(spec)
                break
    return kinds


def _library(spec: str) -> str:
    return spec.partition(":")[0]


def _takes(backend: Backend, kinds: list[str]) -> bool:
    """Whether ``backend`` takes a call with arrays of these types: at least one of its own
    ``array_types``, the rest its own or its ``companion_types``."""
    own = backend.array_types
    return any(kind in own for kind in kinds) and all(
        kind in own or kind in backend.companion_types for kind in kinds)


def select_backend(leaves, backend: Any = None) -> Backend:
    """Pick the backend for a call whose array arguments flatten to ``leaves``."""
    kinds = array_kinds(leaves)
    first_of_library: dict[str, str] = {}
    for kind in kinds:
        first_of_library.setdefault(_library(kind), kind)
    mixed = len(first_of_library) > 1
    # Arrays of several libraries in one call only go to a backend that takes them together.
    hosts = [r for r in _records().values() if _takes(r.backend, kinds)] if mixed else []

    def mixed_error():
        return TypeError("gpukb.rnn got arrays of different libraries in one call: "
                         + " and ".join(first_of_library.values())
                         + ". Convert them to one library first.")

    if mixed and not hosts:
        raise mixed_error()
    if backend is not None:
        name, origin = backend, "backend="
    else:
        name, origin = _explicit_default()
    if name is not None:
        record = _record_for(name, origin=origin)
        if kinds and not _takes(record.backend, kinds):
            if mixed:
                raise mixed_error()
            accepted = record.backend.array_types
            companions = record.backend.companion_types
            raise TypeError(
                f"backend {record.name!r} (chosen by {origin}) accepts "
                f"{', '.join(accepted) or 'no array type'}"
                + (f" (and {', '.join(companions)} next to those)" if companions else "")
                + f", but the call has {' and '.join(kinds)} arrays."
            )
        return record.backend
    return _automatic_backend(leaves, kinds, hosts if mixed else None)


def backend_for(*arrays: Any) -> Backend:
    """The backend that ``gpukb.rnn`` picks by itself for a call on ``arrays`` (rule 4: by array
    type, built-in backends first, then the highest priority, then the name), whatever
    ``backend=``, ``use_backend``, ``set_backend`` or the configuration would choose. A plugin
    that runs gpukb on blocks of other arrays (gpukb-dask) asks it which backend takes a block.
    TypeError when no backend takes these arrays together; RuntimeError, with the backend's
    reason, when the one that does is unavailable here."""
    kinds = array_kinds(arrays)
    libraries = {_library(kind) for kind in kinds}
    hosts = None
    if len(libraries) > 1:
        hosts = [r for r in _records().values() if _takes(r.backend, kinds)]
        if not hosts:
            raise TypeError(f"no backend takes {' and '.join(kinds)} arrays in one call.")
    return _automatic_backend(arrays, kinds, hosts)


# (registry, {array type: the backend rule 4 picked for it}): the pick depends only on the
# registry (records, their priorities and availability are fixed at discovery).
_automatic_cache: tuple = (None, {})


def _automatic_backend(leaves, kinds: list[str], hosts) -> Backend:
    """Rule 4 of select_backend; ``hosts``: for arrays of several libraries, the backends that
    take them together (else None)."""
    global _automatic_cache
    if hosts is not None:
        best = min(hosts, key=lambda r: (not r.builtin, -r.backend.priority, r.name))
        return _record_for(best.name, origin=f"automatic selection for {' and '.join(kinds)} arrays").backend
    if not kinds:
        known = sorted({spec for r in _records().values() for spec in r.backend.array_types})
        types = sorted({f"{type(leaf).__module__}.{type(leaf).__qualname__}" for leaf in leaves})
        raise TypeError(
            f"no backend accepts the arrays of this call ({', '.join(types) or 'no arrays'}); "
            f"the installed backends accept: {', '.join(known) or 'nothing'}."
        )
    kind = kinds[0]
    registry = _records()
    chosen = _automatic_cache[1].get(kind) if _automatic_cache[0] is registry else None
    if chosen is not None:
        return chosen
    candidates = [r for r in registry.values() if kind in r.backend.array_types]
    builtin = [r for r in candidates if r.builtin]
    pool = builtin or candidates
    best = min(pool, key=lambda r: (-r.backend.priority, r.name))  # ties: alphabetical
    chosen = _record_for(best.name, origin=f"automatic selection for {kind} arrays").backend
    if _automatic_cache[0] is not registry:
        _automatic_cache = (registry, {})
    _automatic_cache[1][kind] = chosen
    return chosen
