"""The model config JSON and the Keras version a file records, with the only rewrites the
readers apply to configs: dialect differences between Keras 3 and tf.keras that do not change
what a layer computes.

- ``config["dtype"]`` becomes a plain string: Keras 3 writes a ``DTypePolicy`` dict
  (``{"class_name": "DTypePolicy", "config": {"name": "float32"}, ...}``), tf.keras a string or,
  for mixed precision, a ``Policy`` dict; the policy's name is kept (``"mixed_float16"`` stays
  ``"mixed_float16"``, so a model that uses it can be refused).
- A nested layer config (``layer`` / ``backward_layer`` of a wrapper, each entry of a nested
  model's ``layers``) keeps ``class_name`` and ``config`` (normalised the same way) and drops
  what only the deserializer needs (``module``, ``registered_name``, ``build_config``,
  ``shared_object_id``).
Everything else stays as saved. Nothing in a config is ever executed or unpickled: a
``Lambda`` layer's serialized code stays an opaque value.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from .._errors import ModelFileError

# Largest config.json / model_config accepted: real configs are kilobytes; this only stops a
# hostile archive from expanding into memory.
MAX_CONFIG_BYTES = 256 << 20

_WRAPPED_LAYER_KEYS = ("layer", "backward_layer")


def parse_json(text: str | bytes, path: str, what: str) -> Any:
    """``json.loads`` whose failures name the file and the part of it that is broken."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:    # JSONDecodeError and UnicodeDecodeError too
        raise ModelFileError(f"{path!r}: {what} is not valid JSON ({e})") from e


def keras_major(version: Any, path: str, where: str) -> tuple[str, int]:
    """``(version, major)`` from the ``keras_version`` a file records; only 2 and 3 are read."""
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    if not isinstance(version, str) or not version:
        raise ModelFileError(
            f"{path!r}: {where} records no keras_version, so the Keras version that wrote it "
            f"(and whose semantics it needs) is unknown")
    match = re.match(r"\s*(\d+)\.", version)
    major = int(match.group(1)) if match else None
    if major not in (2, 3):
        raise ModelFileError(
            f"{path!r}: written by Keras {version!r} ({where}); gpukb reads files written by "
            f"tf.keras 2 / tf_keras and Keras 3")
    return version.strip(), major


def plain_dtype(dtype: Any) -> Any:
    """A dtype or dtype-policy config as the policy's name; anything else unchanged."""
    if isinstance(dtype, dict):
        inner = dtype.get("config")
        if isinstance(inner, dict) and isinstance(inner.get("name"), str):
            return inner["name"]
    return dtype


def _is_serialized_object(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("class_name"), str) \
        and isinstance(value.get("config"), dict)


def normalise_layer_config(config: Any) -> Any:
    """A deep copy of one layer's ``config`` dict with the dialect rewrites above."""
    if not isinstance(config, dict):
        return copy.deepcopy(config)
    out = copy.deepcopy(config)
    if "dtype" in out:
        out["dtype"] = plain_dtype(out["dtype"])
    for key in _WRAPPED_LAYER_KEYS:
        if _is_serialized_object(out.get(key)):
            out[key] = {"class_name": out[key]["class_name"],
                        "config": normalise_layer_config(out[key]["config"])}
    if isinstance(out.get("layers"), list):            # a nested Sequential / Functional model
        out["layers"] = [_normalise_nested_entry(entry) for entry in out["layers"]]
    return out


def _normalise_nested_entry(entry: Any) -> Any:
    if not _is_serialized_object(entry):
        return entry
    kept = {"class_name": entry["class_name"], "config": normalise_layer_config(entry["config"])}
    for key in ("name", "inbound_nodes"):               # a nested Functional's graph
        if key in entry:
            kept[key] = entry[key]
    return kept
