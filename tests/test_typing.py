"""Type hints: mypy passes over gpukb itself, and the public API's hints are what users see.

Two user programs are type-checked with ``mypy --strict`` the way a user's code sees gpukb (through
its ``py.typed`` marker when installed): ``good.py`` calls every public function with correct
types and must pass (it is also run, so the hints cannot promise what the code refuses);
``bad.py`` makes wrong calls, each marked ``# expect: <error code>``, and mypy must report exactly
those errors on exactly those lines.
"""

from __future__ import annotations

import os
import pathlib
import re
import site
import subprocess
import sys
import sysconfig

import pytest

import gpukb

ROOT = pathlib.Path(__file__).resolve().parents[1]

GOOD = '''
from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import assert_type

import gpukb

F32 = npt.NDArray[np.float32]


def step(x: F32, states: tuple[F32, ...]) -> tuple[F32, list[F32]]:
    h = np.tanh(x + states[0])
    return h, [h]


@gpukb.jit_step
def jitted(x: F32, states: tuple[F32, ...]) -> tuple[F32, tuple[F32]]:
    h = x + states[0]
    return h, (h,)


@gpukb.jit_step(fastmath=False)
def jitted_with_options(x: F32, states: tuple[F32, ...]) -> tuple[F32, tuple[F32]]:
    return x, (states[0],)


class MyBackend(gpukb.Backend):  # as in the README's "Writing a backend"
    name = "mybackend"
    array_types = ("mylib:Array",)
    priority = 1
    install_hint = "pip install mylib"

    def is_available(self) -> bool:
        return True

    def _load_xp(self) -> Any:
        return np


def main() -> None:
    assert_type(gpukb.__version__, str)
    assert_type(gpukb.floatx(), str)
    gpukb.set_floatx("float64")
    gpukb.set_floatx(np.float64)
    gpukb.set_floatx(np.dtype("float16"))
    gpukb.set_floatx(float)
    assert_type(gpukb.epsilon(), float)
    gpukb.set_epsilon(1e-5)
    gpukb.set_epsilon(1)
    gpukb.set_epsilon(np.float32(1e-3))
    assert_type(gpukb.image_data_format(), str)
    gpukb.set_image_data_format("Channels_First")
    assert_type(gpukb.get_uid(), int)
    assert_type(gpukb.get_uid("dense"), int)
    gpukb.reset_uids()
    gpukb.clear_session()
    gpukb.clear_session(free_memory=False)

    t = gpukb.placeholder(shape=(None, 3), dtype="float32", name="x")
    assert_type(t, gpukb.KerasTensor)
    gpukb.placeholder(ndim=2, dtype=np.float64, sparse=True)
    gpukb.placeholder((2, np.int64(3)), ragged=True)
    assert_type(t.shape, tuple[int | None, ...])
    assert_type(t.ndim, int)
    assert_type(t.dtype, str)
    assert_type(t.sparse, bool)
    assert_type(t.ragged, bool)
    assert_type(t.name, str)
    assert_type(gpukb.is_keras_tensor(t), bool)
    gpukb.KerasTensor([1, None], dtype="int32", sparse=False, ragged=False, name="k")

    assert_type(gpukb.list_backends(), list[str])
    assert_type(gpukb.refresh_backends(), list[str])
    assert_type(gpukb.get_backend(), gpukb.Backend)
    gpukb.get_backend("cpu")
    gpukb.set_backend("cpu")
    gpukb.set_backend(None)
    with gpukb.use_backend("cpu") as backend:
        assert_type(backend, gpukb.Backend)
    assert_type(bool(gpukb.Availability(False, "why")), bool)
    assert_type(MyBackend().is_available(), bool)

    gpukb.set_floatx("float32")
    x = np.ones((2, 3, 4), np.float32)
    h0 = np.zeros((2, 4), np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
    last, outputs, states = gpukb.rnn(
        step, x, [h0], go_backwards=True, mask=mask, constants=[h0], unroll=False,
        input_length=None, time_major=False, zero_output_for_mask=True,
        return_all_outputs=False, backend="cpu")
    gpukb.rnn(step, x, (h0,), input_length=[3, 2])
    gpukb.rnn(jitted, x, [h0])
    gpukb.rnn(jitted_with_options, x, [h0])

    w = np.zeros((4, 16), np.float32)
    lstm = gpukb.cells.lstm(w, w, np.zeros(16, np.float32), activation="tanh",
                            recurrent_activation=None)
    gpukb.rnn(lstm, x, [h0, h0])
    gru = gpukb.cells.gru(w[:, :12], w[:, :12], None, reset_after=False)
    gpukb.rnn(gru, x, [h0])
    simple = gpukb.cells.simple_rnn(w[:, :4], w[:, :4], activation="relu")
    gpukb.rnn(simple, x, [h0])
    assert_type(simple(x[:, 0], (h0,)), tuple[Any, list[Any]])
    assert_type(gpukb.activations.standardize("relu"), str)


main()
'''

BAD = '''
from typing import Any

import numpy as np

import gpukb


def step(x: Any, states: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    return x, [states[0]]


def no_states(x: Any) -> Any:
    return x


class NotABackendAnswer(gpukb.Backend):
    def is_available(self) -> str:  # expect: override
        return "yes"


x = np.ones((2, 3, 4), np.float32)
h0 = np.zeros((2, 4), np.float32)
gpukb.set_floatx(3)  # expect: arg-type
gpukb.set_epsilon("1e-7")  # expect: arg-type
gpukb.set_image_data_format(None)  # expect: arg-type
gpukb.get_uid(1)  # expect: arg-type
name: int = gpukb.floatx()  # expect: assignment
gpukb.placeholder(shape=(None, "3"))  # expect: arg-type
gpukb.placeholder(ndim=2, sparse="no")  # expect: arg-type
gpukb.rnn(step, x)  # expect: call-arg
gpukb.rnn(step, x, h0)  # expect: arg-type
gpukb.rnn(step, x, [h0], constants=h0)  # expect: arg-type
gpukb.rnn(step, x, [h0], backend=gpukb.get_backend)  # expect: arg-type
gpukb.rnn(no_states, x, [h0])  # expect: arg-type
gpukb.rnn(step, x, [h0], go_backward=True)  # expect: call-arg
gpukb.cells.lstm(np.zeros((4, 16)), np.zeros((4, 16)), activation=np.tanh)  # expect: arg-type
gpukb.set_backend(gpukb.get_backend())  # expect: arg-type
backends: list[int] = gpukb.list_backends()  # expect: assignment
'''


def _expected_errors(source: str) -> set[tuple[int, str]]:
    expected = set()
    for number, line in enumerate(source.splitlines(), start=1):
        match = re.search(r"# expect: ([\w-]+)", line)
        if match:
            expected.add((number, match.group(1)))
    return expected


def _installed_normally() -> bool:
    """Whether gpukb sits in a site-packages folder (else: an editable install or a checkout)."""
    folders = set(site.getsitepackages()) | {site.getusersitepackages()}
    folders |= {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    parent = pathlib.Path(gpukb.__file__).resolve().parents[1]
    return any(pathlib.Path(folder).resolve() == parent for folder in folders if folder)


def _mypy(args, cwd, env=None):
    return subprocess.Popen([sys.executable, "-m", "mypy", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def mypy_results(tmp_path_factory):
    """Both mypy runs and the good program's own run, at once (each mypy run takes ~20 s)."""
    tmp = tmp_path_factory.mktemp("typing")
    (tmp / "good.py").write_text(GOOD)
    (tmp / "bad.py").write_text(BAD)
    # As a user's project sees an installed package: gpukb's own errors are not the user's.
    (tmp / "mypy.ini").write_text("[mypy]\nstrict = True\n\n[mypy-gpukb.*]\nfollow_imports = silent\n")
    env = dict(os.environ, GPUKB_HOME=str(tmp))
    env.pop("MYPYPATH", None)
    if not _installed_normally():
        # An editable install is found through an import hook, which mypy does not run: point
        # it at the source folder instead (an installed gpukb is found through py.typed).
        env["MYPYPATH"] = str(pathlib.Path(gpukb.__file__).resolve().parents[1])
    runs = {
        "package": _mypy(["--config-file", str(ROOT / "pyproject.toml"),
                          "--cache-dir", str(tmp / "cache-package")], cwd=ROOT),
        "user": _mypy(["--config-file", "mypy.ini", "--cache-dir", str(tmp / "cache-user"),
                       "good.py", "bad.py"], cwd=tmp, env=env),
        "run good.py": subprocess.Popen([sys.executable, "good.py"], cwd=tmp, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True),
    }
    results = {}
    for key, process in runs.items():
        output, _ = process.communicate(timeout=300)
        results[key] = (process.returncode, output)
    return results


def test_mypy_passes_on_the_gpukb_package(mypy_results):
    returncode, output = mypy_results["package"]
    assert returncode == 0, output


def test_correct_user_code_passes_mypy_strict(mypy_results):
    _, output = mypy_results["user"]
    good_errors = [line for line in output.splitlines() if line.startswith("good.py")]
    assert good_errors == [], output
    assert "py.typed" not in output and "import-not-found" not in output, output


def test_the_correct_user_code_also_runs(mypy_results):
    returncode, output = mypy_results["run good.py"]
    assert returncode == 0, output


def test_wrong_user_code_gets_exactly_the_expected_errors(mypy_results):
    _, output = mypy_results["user"]
    reported = {(int(m.group(1)), m.group(2))
                for m in re.finditer(r"^bad\.py:(\d+): error: .*\[([\w-]+)\]$", output, re.M)}
    expected = _expected_errors(BAD)
    assert expected and reported == expected, output

