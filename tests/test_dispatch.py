"""The dispatcher: entry-point discovery, selection rules, broken plugins, thread/task isolation.

Throwaway plugin distributions are written to a temporary folder with real dist-info metadata
(entry_points.txt), put on sys.path, and found by importlib.metadata like installed ones.
"""

import asyncio
import gc
import json
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

import gpukb
from gpukb import _dispatch

PLUGIN_MODULE = '''
import gpukb

CALLS = []
CLEARED = []


class FakeArray:
    """A stand-in for another array library's array type."""
    def __init__(self, value):
        self.value = value


class FakeBackend(gpukb.Backend):
    name = "fake"
    array_types = ("fakeplug_mod:FakeArray",)
    priority = 5

    def _load_xp(self):
        import numpy
        return numpy

    def rnn(self, step_function, inputs, initial_states, **options):
        CALLS.append(("fake", options))
        return "ran on fake"

    def on_clear_session(self):
        CLEARED.append(self.name)


class GreedyBackend(gpukb.Backend):
    """Claims NumPy arrays with a higher priority than the built-in cpu backend."""
    name = "greedy"
    array_types = ("numpy:ndarray",)
    priority = 1000

    def _load_xp(self):
        import numpy
        return numpy

    def rnn(self, step_function, inputs, initial_states, **options):
        CALLS.append(("greedy", options))
        return "ran on greedy"


class RivalBackend(FakeBackend):
    """A second plugin for FakeArray with a lower priority."""
    name = "rival"
    priority = 1

    def rnn(self, step_function, inputs, initial_states, **options):
        return "ran on rival"


class OffBackend(gpukb.Backend):
    name = "off"
    array_types = ("fakeplug_mod:FakeArray",)
    install_hint = "Install the off extra."

    def is_available(self):
        return gpukb.Availability(False, "the off device is switched off")


class CompanionBackend(gpukb.Backend):
    """Takes lazyplug_mod arrays, and NumPy arrays next to them (as gpukb-dask does)."""
    name = "sidecar"
    array_types = ("lazyplug_mod:LazyArray",)
    companion_types = ("numpy:ndarray",)

    def rnn(self, step_function, inputs, initial_states, **options):
        return "ran on sidecar"


class RaisingBackend(gpukb.Backend):
    name = "raising"

    def is_available(self):
        raise RuntimeError("probe exploded")


class Misnamed(gpukb.Backend):
    name = "not_the_entry_point_name"


class NotABackend:
    name = "notabackend"
'''

BROKEN_MODULE = "raise ImportError('the plugin needs libfoo')\n"

ENTRY_POINTS = """
[gpukb.backends]
fake = fakeplug_mod:FakeBackend
greedy = fakeplug_mod:GreedyBackend
rival = fakeplug_mod:RivalBackend
off = fakeplug_mod:OffBackend
sidecar = fakeplug_mod:CompanionBackend
raising = fakeplug_mod:RaisingBackend
misnamed = fakeplug_mod:Misnamed
notabackend = fakeplug_mod:NotABackend
broken = brokenplug_mod:Backend
cpu = fakeplug_mod:GreedyBackend
"""


def write_plugin_distribution(folder):
    (folder / "fakeplug_mod.py").write_text(PLUGIN_MODULE)
    (folder / "brokenplug_mod.py").write_text(BROKEN_MODULE)
    (folder / "lazyplug_mod.py").write_text("class LazyArray:\n    pass\n")
    info = folder / "fakeplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS))
    return folder


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The fake plugin distribution installed on sys.path; discovery refreshed around the test."""
    write_plugin_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gpukb.refresh_backends()
    import fakeplug_mod

    fakeplug_mod.CALLS.clear()
    yield fakeplug_mod, caught
    gpukb.set_backend(None)
    for name in ("fakeplug_mod", "brokenplug_mod", "lazyplug_mod"):
        sys.modules.pop(name, None)
    monkeypatch.undo()
    gpukb.refresh_backends()


def step(x, states):
    return x, states


ARGS = (step, np.zeros((1, 2, 1)), [np.zeros((1, 1))])


# --------------------------------------------------------------------------------------------

def test_builtin_backends_are_discovered():
    assert {"cpu", "cuda"} <= set(gpukb.list_backends())
    assert gpukb.get_backend("cpu").name == "cpu"
    assert gpukb.get_backend().name == "cpu"


@pytest.mark.filterwarnings("ignore:gpukb. skipping backend")
def test_discovery_is_cached_and_refreshable(plugin):
    first = gpukb.get_backend("fake")
    assert gpukb.get_backend("fake") is first
    gpukb.refresh_backends()
    assert gpukb.get_backend("fake") is not first


def test_plugins_are_discovered(plugin):
    names = set(gpukb.list_backends())  # other installed plugins (gpukb-torch) may be there too
    assert {"cpu", "cuda", "fake", "greedy", "rival", "off"} <= names
    assert not names & {"raising", "misnamed", "notabackend", "broken"}


def test_each_broken_entry_point_warns_once_naming_it_its_distribution_and_error(plugin):
    _, caught = plugin
    messages = [str(w.message) for w in caught if "skipping backend entry point" in str(w.message)]
    expected = {
        "'raising'": "probe exploded",
        "'misnamed'": "differs from the entry point's name",
        "'notabackend'": "is not a subclass of gpukb.Backend",
        "'broken'": "the plugin needs libfoo",
        "'cpu'": "already taken by 'gpukb.backends.cpu:CPUBackend'",
    }
    assert len(messages) == len(expected)
    for name, error in expected.items():
        matching = [m for m in messages if f"entry point {name}" in m]
        assert len(matching) == 1, (name, messages)
        assert error in matching[0] and "'fakeplug'" in matching[0]


def test_a_broken_plugin_never_breaks_import_or_other_backends(tmp_path):
    write_plugin_distribution(tmp_path)
    from helpers import run_python

    code = ("import gpukb, numpy as np\n"
            "print(gpukb.list_backends())\n"
            "out = gpukb.rnn(lambda x, s: (x, s), np.zeros((1, 2, 1)), [np.zeros((1, 1))], backend='greedy')\n"
            "print(out)\n")
    result = run_python(code, home=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "ran on greedy" in result.stdout
    assert result.stderr.count("skipping backend entry point") == 5


def test_numpy_inputs_stay_on_cpu_even_with_a_greedy_plugin(plugin):
    chosen = _dispatch.select_backend([np.zeros(3)])
    assert chosen.name == "cpu"


def test_greedy_plugin_is_used_when_selected_explicitly(plugin):
    module, _ = plugin
    assert gpukb.rnn(*ARGS, backend="greedy") == "ran on greedy"
    with gpukb.use_backend("greedy"):
        assert gpukb.rnn(*ARGS) == "ran on greedy"
    gpukb.set_backend("greedy")
    assert gpukb.rnn(*ARGS) == "ran on greedy"
    assert [c[0] for c in module.CALLS] == ["greedy"] * 3


def test_selection_precedence(plugin):
    gpukb.set_backend("greedy")
    with gpukb.use_backend("cpu"):
        assert _dispatch.select_backend([np.zeros(1)]).name == "cpu"
        assert gpukb.rnn(*ARGS, backend="greedy") == "ran on greedy"
        with gpukb.use_backend("greedy"):
            assert _dispatch.select_backend([np.zeros(1)]).name == "greedy"
        assert _dispatch.select_backend([np.zeros(1)]).name == "cpu"
    assert _dispatch.select_backend([np.zeros(1)]).name == "greedy"
    gpukb.set_backend(None)
    assert _dispatch.select_backend([np.zeros(1)]).name == "cpu"


def test_plugins_compete_by_priority_for_types_no_builtin_accepts(plugin):
    module, _ = plugin
    x = module.FakeArray(1)
    assert _dispatch.select_backend([x]).name == "fake"  # priority 5 beats rival's 1
    assert gpukb.rnn(step, x, [module.FakeArray(0)]) == "ran on fake"
    assert _dispatch.select_backend([x], "rival").name == "rival"


def test_backend_for_is_the_automatic_choice_whatever_was_chosen_explicitly(plugin):
    module, _ = plugin
    import lazyplug_mod

    gpukb.set_backend("greedy")
    with gpukb.use_backend("greedy"):
        assert gpukb.backend_for(np.zeros(1)).name == "cpu"       # built-in first, as select_backend
        assert gpukb.backend_for(module.FakeArray(1)).name == "fake"   # then priority (rival: 1)
        assert gpukb.backend_for(lazyplug_mod.LazyArray(), np.zeros(1)).name == "sidecar"
    assert gpukb.backend_for(np.zeros(1)) is gpukb.get_backend("cpu")
    with pytest.raises(TypeError, match=r"no backend accepts the arrays of this call \(builtins.list"):
        gpukb.backend_for([1.0])
    with pytest.raises(TypeError, match=r"no backend takes numpy:ndarray and fakeplug_mod:FakeArray"):
        gpukb.backend_for(np.zeros(1), module.FakeArray(1))


def test_mixed_array_libraries_are_a_type_error_naming_both(plugin):
    module, _ = plugin
    with pytest.raises(TypeError, match=r"numpy:ndarray and fakeplug_mod:FakeArray"):
        gpukb.rnn(step, np.zeros((1, 2, 1)), [module.FakeArray(0)])
    assert module.CALLS == []


def test_a_backend_takes_its_companion_types_next_to_its_own(plugin):
    module, _ = plugin
    import lazyplug_mod

    lazy = lazyplug_mod.LazyArray()
    assert gpukb.rnn(step, lazy, [np.zeros((1, 1))]) == "ran on sidecar"
    assert gpukb.rnn(step, np.zeros((1, 2, 1)), [lazy], backend="sidecar") == "ran on sidecar"
    # Companion types alone never select the backend, and it refuses them when chosen.
    assert gpukb._dispatch.select_backend([np.zeros(1)]).name == "cpu"
    with pytest.raises(TypeError, match=r"accepts lazyplug_mod:LazyArray \(and numpy:ndarray next "
                                        r"to those\), but the call has numpy:ndarray arrays"):
        gpukb.rnn(*ARGS, backend="sidecar")
    # A library that is neither its own nor a companion is still a mix that nobody takes.
    for backend in (None, "sidecar"):
        with pytest.raises(TypeError, match=r"lazyplug_mod:LazyArray and fakeplug_mod:FakeArray"):
            gpukb.rnn(step, lazy, [module.FakeArray(0)], backend=backend)
    assert module.CALLS == []


def test_explicit_backend_must_accept_the_arrays(plugin):
    with pytest.raises(TypeError, match=r"backend 'fake' \(chosen by backend=\) accepts "
                                        r"fakeplug_mod:FakeArray, but the call has numpy:ndarray"):
        gpukb.rnn(*ARGS, backend="fake")


def test_unknown_backend_is_a_value_error_listing_known_ones(plugin):
    for call in (lambda: gpukb.get_backend("nope"), lambda: gpukb.set_backend("nope"),
                 lambda: gpukb.use_backend("nope").__enter__(), lambda: gpukb.rnn(*ARGS, backend="nope")):
        # ('dask': the gpukb-dask plugin, when the test environment installs it)
        with pytest.raises(ValueError, match=r"unknown backend 'nope'; known backends: 'cpu', 'cuda', "
                                             r"('dask', )?'fake', 'greedy', 'off', 'rival', 'sidecar'"):
            call()


def test_unavailable_backend_is_a_runtime_error_with_reason_and_hint(plugin):
    with pytest.raises(RuntimeError, match=r"'off' is not available: the off device is switched off\. "
                                           r"Install the off extra\."):
        gpukb.get_backend("off")


def test_cuda_unavailable_here_names_the_pip_extras():
    record = {r.name: r for r in _dispatch.backend_records()}["cuda"]
    if record.availability:
        pytest.skip("a usable GPU is present")
    with pytest.raises(RuntimeError, match=r"gpukb\[cuda12\].*gpukb\[cuda13\]"):
        gpukb.set_backend("cuda")


def test_backend_name_must_be_a_string():
    with pytest.raises(TypeError, match="must be a str"):
        gpukb.get_backend(3)


def test_no_backend_for_unknown_array_type():
    with pytest.raises(TypeError, match=r"no backend accepts the arrays of this call \(builtins.list\)"):
        _dispatch.select_backend([[1, 2]])


def test_use_backend_is_local_to_the_thread(plugin):
    seen = {}
    inside, done = threading.Event(), threading.Event()

    def other():
        inside.wait(10)
        seen["other"] = _dispatch.select_backend([np.zeros(1)]).name
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with gpukb.use_backend("greedy"):
        inside.set()
        done.wait(10)
        seen["self"] = _dispatch.select_backend([np.zeros(1)]).name
    thread.join()
    assert seen == {"other": "cpu", "self": "greedy"}


def test_use_backend_is_local_to_the_async_task(plugin):
    async def task(name, started, release):
        if name:
            with gpukb.use_backend(name):
                started.set()
                await release.wait()
                return _dispatch.select_backend([np.zeros(1)]).name
        started.set()
        await release.wait()
        return _dispatch.select_backend([np.zeros(1)]).name

    async def main():
        events = [(asyncio.Event(), asyncio.Event()) for _ in range(2)]
        tasks = [asyncio.create_task(task(n, *e)) for n, e in zip(["greedy", None], events)]
        for started, _ in events:
            await started.wait()
        for _, release in events:
            release.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == ["greedy", "cpu"]


def test_clear_session_reaches_every_loaded_backend(plugin, monkeypatch):
    module, _ = plugin
    module.CLEARED.clear()
    gpukb.clear_session()
    assert sorted(module.CLEARED) == ["fake", "rival"]


def test_configured_backend_from_environment(tmp_path):
    write_plugin_distribution(tmp_path)
    from helpers import run_python

    code = ("import gpukb, numpy as np\n"
            "print(gpukb.get_backend().name)\n"
            "print(gpukb.rnn(lambda x, s: (x, s), np.zeros((1, 2, 1)), [np.zeros((1, 1))]))\n")
    result = run_python(code, home=tmp_path, env={"PYTHONPATH": str(tmp_path), "GPUKB_BACKEND": "greedy"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["greedy", "ran", "on", "greedy"]


CONFIGURED_UNKNOWN = """\
import json, sys, warnings
import numpy as np
with warnings.catch_warnings(record=True) as at_import:
    warnings.simplefilter("always")
    import gpukb
with warnings.catch_warnings(record=True) as at_calls:
    warnings.simplefilter("always")
    out = gpukb.rnn(lambda x, s: (x, s), np.zeros((1, 2, 1)), [np.zeros((1, 1))])
    gpukb.rnn(lambda x, s: (x, s), np.zeros((1, 2, 1)), [np.zeros((1, 1))])
print(json.dumps([len(at_import), [[str(w.message), w.category.__name__, w.filename, w.lineno]
                                   for w in at_calls if str(w.message).startswith("gpukb")],
                  type(out[1]).__name__, gpukb.get_backend().name]))
"""


@pytest.mark.parametrize("where", ["variable", "config file"])
def test_configured_unknown_backend_warns_once_at_discovery_and_is_ignored(tmp_path, where):
    """import never reads entry points, so the name is checked at the first discovery (here the
    first gpukb.rnn): one warning at the user's line, then automatic selection."""
    from helpers import run_python

    env = {"GPUKB_BACKEND": "nosuch"} if where == "variable" else {}
    if where == "config file":
        (tmp_path / "gpukb.json").write_text(json.dumps({"backend": "nosuch"}))
    script = tmp_path / "user_script.py"
    script.write_text(CONFIGURED_UNKNOWN)
    result = run_python(f"import runpy; runpy.run_path({str(script)!r})", home=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    n_at_import, warned, output_type, default = json.loads(result.stdout.strip().splitlines()[-1])
    assert n_at_import == 0
    assert len(warned) == 1, warned
    message, category, filename, lineno = warned[0]
    assert (category, filename, lineno) == ("RuntimeWarning", str(script), 8)
    origin = "GPUKB_BACKEND" if where == "variable" else f"config file {tmp_path / 'gpukb.json'}"
    assert origin in message and "'nosuch'" in message and "known backends: 'cpu', 'cuda'" in message
    assert (output_type, default) == ("ndarray", "cpu")


def test_set_backend_none_overrides_the_configured_backend(tmp_path):
    write_plugin_distribution(tmp_path)
    from helpers import run_python

    code = ("import gpukb, numpy as np\n"
            "args = (lambda x, s: (x, s), np.zeros((1, 2, 1)), [np.zeros((1, 1))])\n"
            "print(gpukb.get_backend().name, gpukb.rnn(*args))\n"
            "gpukb.set_backend(None)\n"
            "print(gpukb.get_backend().name, type(gpukb.rnn(*args)[1]).__name__)\n")
    result = run_python(code, home=tmp_path, env={"PYTHONPATH": str(tmp_path), "GPUKB_BACKEND": "greedy"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["greedy ran on greedy", "cpu ndarray"]


def test_set_backend_none_escapes_an_unavailable_configured_backend(tmp_path):
    write_plugin_distribution(tmp_path)
    from helpers import run_python

    code = ("import gpukb, numpy as np\n"
            "args = (lambda x, s: (x, s), np.zeros((1, 2, 1)), [np.zeros((1, 1))])\n"
            "try:\n"
            "    gpukb.rnn(*args)\n"
            "except RuntimeError as error:\n"
            "    print('RuntimeError', 'GPUKB_BACKEND' in str(error))\n"
            "gpukb.set_backend(None)\n"
            "print(type(gpukb.rnn(*args)[1]).__name__)\n")
    result = run_python(code, home=tmp_path, env={"PYTHONPATH": str(tmp_path), "GPUKB_BACKEND": "off"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["RuntimeError True", "ndarray"]


def test_backend_available_answers_without_raising(plugin):
    off = gpukb.backend_available("off")
    assert isinstance(off, gpukb.Availability) and not off
    assert off.reason == "the off device is switched off. Install the off extra."
    assert gpukb.backend_available("fake") and gpukb.backend_available("cpu")
    with pytest.raises(ValueError, match=r"backend_available: unknown backend 'nope'; known backends: 'cpu'"):
        gpukb.backend_available("nope")
    with pytest.raises(TypeError, match="must be a str"):
        gpukb.backend_available(None)


def test_get_backend_without_the_availability_check_still_cannot_run(plugin):
    module, _ = plugin
    off = gpukb.get_backend("off", check_available=False)
    assert off.name == "off" and type(off).__name__ == "OffBackend"
    with pytest.raises(RuntimeError, match="not available: the off device is switched off"):
        gpukb.get_backend("off")
    with pytest.raises(RuntimeError, match="not available: the off device is switched off"):
        gpukb.rnn(step, module.FakeArray(1), [module.FakeArray(0)], backend=off)
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        gpukb.get_backend("nope", check_available=False)
    with pytest.raises(TypeError, match="check_available must be True or False"):
        gpukb.get_backend("off", check_available="no")


def test_clear_session_collects_only_if_a_loaded_backend_released_something(plugin, monkeypatch):
    module, _ = plugin
    records = dict(_dispatch._registry)
    collections = []
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(a) or 0)
    # The plugin's on_clear_session returns None (it does not say): gpukb must still collect.
    gpukb.clear_session()
    assert len(collections) == 1
    # Backends that report False: nothing to free, no collection.
    monkeypatch.setattr(_dispatch, "_registry", {"off": records["off"], "greedy": records["greedy"]})
    collections.clear()
    gpukb.clear_session()
    assert collections == []


def test_gpukb_info_lists_backends_with_availability(tmp_path):
    write_plugin_distribution(tmp_path)
    from helpers import run_python

    result = run_python("import sys; from gpukb.cli import main; sys.exit(main(['info']))",
                        home=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "cpu      available" in out
    assert "off      unavailable: the off device is switched off" in out
    assert "from fakeplug (fakeplug_mod:FakeBackend)" in out
    assert "cuda" in out


def test_availability_coercion():
    from gpukb._backend import Availability

    assert Availability.coerce(True) and not Availability.coerce(False)
    assert Availability.coerce((False, "why")).reason == "why"
    with pytest.raises(TypeError, match="must return True, False"):
        Availability.coerce("yes")
