"""What ``import gpukb`` leaves for later (gpukb.keras, the gradient code, entry-point discovery),
that the lazy entries behave as the eager ones did, and that the dispatcher's cache of claimed
array types notices libraries imported (or re-imported) after a call."""

from __future__ import annotations

import inspect
import json
import sys
import types

import numpy as np
import pytest

import gpukb
from gpukb import _dispatch
from gpukb._backend import Availability, Backend
from helpers import run_python

LAZY = ("gpukb.keras", "gpukb._vjp", "optree", "importlib.metadata")


def test_import_gpukb_leaves_keras_the_gradients_and_discovery_for_later(tmp_path):
    code = ("import sys, json, gpukb\n"
            f"before = [m for m in {LAZY!r} if m in sys.modules]\n"
            "keras = gpukb.keras\n"
            "print(json.dumps([before, keras.__name__, 'gpukb.keras' in sys.modules,"
            " 'keras' in dir(gpukb), hasattr(gpukb, 'no_such_name')]))")
    result = run_python(code, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [[], "gpukb.keras", True, True, False]


@pytest.mark.parametrize("name", ["rnn_vjp", "rnn_pullback", "rnn_residual_specs"])
def test_gradient_entries_have_the_signature_and_docstring_of_the_implementation(name):
    from gpukb._vjp import frontend

    assert inspect.signature(getattr(gpukb, name)) == inspect.signature(getattr(frontend, name))
    assert inspect.getdoc(getattr(gpukb, name)) == inspect.getdoc(getattr(frontend, name))


def test_rnn_vjp_entry_gives_the_implementations_results():
    from gpukb._vjp.frontend import rnn_vjp as implementation

    rng = np.random.default_rng(3)
    w = rng.standard_normal((2, 9))
    u = rng.standard_normal((3, 9))
    cell = gpukb.cells.gru(w, u, None, reset_after=False)
    x, h0 = rng.standard_normal((2, 4, 2)), rng.standard_normal((2, 3))
    mask = np.array([[1, 1, 0, 1], [1, 0, 0, 1]], bool)
    ours, pull = gpukb.rnn_vjp(cell, x, [h0], mask=mask, go_backwards=True)
    theirs, pull_theirs = implementation(cell, x, [h0], mask=mask, go_backwards=True)
    for a, b in zip(ours[:2], theirs[:2]):
        np.testing.assert_array_equal(a, b)
    d = np.ones_like(ours[1])
    np.testing.assert_array_equal(pull(d).inputs, pull_theirs(d).inputs)


class _FakeBackend(Backend):
    name = "h6fake"
    array_types = ("h6fake_lib:Arr",)

    def _load_xp(self):
        return np


@pytest.fixture
def fake_registry(monkeypatch):
    record = _dispatch.BackendRecord("h6fake", "x:y", "h6fake-dist", _FakeBackend(), Availability(True))
    registry = dict(_dispatch._records())
    registry["h6fake"] = record
    monkeypatch.setattr(_dispatch, "_registry", registry)
    monkeypatch.delitem(sys.modules, "h6fake_lib", raising=False)
    yield
    sys.modules.pop("h6fake_lib", None)


def _fake_library(with_class=True):
    module = types.ModuleType("h6fake_lib")
    if with_class:
        module.Arr = type("Arr", (), {"__module__": "h6fake_lib"})
    sys.modules["h6fake_lib"] = module
    return module


def test_claims_follow_libraries_imported_after_a_call(fake_registry):
    assert _dispatch.array_kinds([np.zeros(2)]) == ["numpy:ndarray"]   # fills the cache
    first = _fake_library()
    assert _dispatch.array_kinds([first.Arr()]) == ["h6fake_lib:Arr"]
    assert _dispatch.select_backend([first.Arr()]).name == "h6fake"
    # Removed and imported again: a new module and class; the old class's arrays are no claim.
    del sys.modules["h6fake_lib"]
    second = _fake_library()
    assert _dispatch.array_kinds([second.Arr()]) == ["h6fake_lib:Arr"]
    assert _dispatch.array_kinds([first.Arr()]) == []


def test_claims_of_a_module_still_being_imported_are_resolved_again(fake_registry):
    module = _fake_library(with_class=False)   # in sys.modules, its class not defined yet
    assert _dispatch.array_kinds([np.zeros(2)]) == ["numpy:ndarray"]
    module.Arr = type("Arr", (), {"__module__": "h6fake_lib"})
    assert _dispatch.array_kinds([module.Arr()]) == ["h6fake_lib:Arr"]


def test_a_new_registry_is_a_new_choice(monkeypatch):
    assert _dispatch.select_backend([np.zeros(2)]).name == "cpu"   # cached for this registry

    class Greedy(_FakeBackend):
        name = "h6greedy"
        array_types = ("numpy:ndarray",)

    record = _dispatch.BackendRecord("h6greedy", "x:y", "gpukb", Greedy(), Availability(True))
    monkeypatch.setattr(_dispatch, "_registry", {"h6greedy": record})  # a built-in, the only one
    assert _dispatch.select_backend([np.zeros(2)]).name == "h6greedy"
