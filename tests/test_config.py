"""Config file ($GPUKB_HOME/gpukb.json) and GPUKB_* variables, read at import in a fresh process."""

import json
import os
import subprocess
import sys

import pytest

from helpers import run_python, state_in_child


def write_config(home, content):
    path = home / "gpukb.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_config_file_sets_every_key(tmp_path):
    write_config(tmp_path, {"floatx": "float64", "epsilon": 1e-4,
                            "image_data_format": "Channels_First", "backend": "cpu"})
    state, stderr = state_in_child(home=tmp_path)
    assert state == {"floatx": "float64", "epsilon": 1e-4,
                     "image_data_format": "channels_first", "backend": "cpu"}
    assert "Warning" not in stderr


def test_environment_overrides_the_file(tmp_path):
    write_config(tmp_path, {"floatx": "float64", "epsilon": 1e-4, "image_data_format": "channels_first"})
    state, _ = state_in_child(home=tmp_path, env={
        "GPUKB_FLOATX": "float16", "GPUKB_EPSILON": "0.25",
        "GPUKB_IMAGE_DATA_FORMAT": "CHANNELS_LAST", "GPUKB_BACKEND": "cuda"})
    assert state == {"floatx": "float16", "epsilon": 0.25,
                     "image_data_format": "channels_last", "backend": "cuda"}


def test_malformed_json_warns_once_naming_the_file_and_keeps_defaults(tmp_path):
    path = write_config(tmp_path, "{floatx: float64")
    state, stderr = state_in_child(home=tmp_path)
    assert state["floatx"] == "float32" and state["epsilon"] == 1e-07
    assert stderr.count("RuntimeWarning") == 1
    assert str(path) in stderr


def test_non_object_json_warns(tmp_path):
    path = write_config(tmp_path, "[1, 2]")
    state, stderr = state_in_child(home=tmp_path)
    assert state["floatx"] == "float32"
    assert stderr.count("RuntimeWarning") == 1 and str(path) in stderr and "JSON object" in stderr


def test_bad_value_warns_naming_file_and_key_and_keeps_the_rest(tmp_path):
    path = write_config(tmp_path, {"floatx": "float8", "epsilon": -1, "image_data_format": "channels_first"})
    state, stderr = state_in_child(home=tmp_path)
    assert state["floatx"] == "float32" and state["epsilon"] == 1e-07
    assert state["image_data_format"] == "channels_first"
    assert stderr.count("RuntimeWarning") == 2
    assert f"{path}: key 'floatx'" in stderr and f"{path}: key 'epsilon'" in stderr


def test_unknown_key_warns(tmp_path):
    write_config(tmp_path, {"flaotx": "float64"})
    state, stderr = state_in_child(home=tmp_path)
    assert state["floatx"] == "float32"
    assert stderr.count("RuntimeWarning") == 1 and "'flaotx'" in stderr


@pytest.mark.parametrize("variable, value", [("GPUKB_FLOATX", "double"), ("GPUKB_EPSILON", "tiny"),
                                             ("GPUKB_EPSILON", "0"), ("GPUKB_IMAGE_DATA_FORMAT", "nhwc"),
                                             ("GPUKB_BACKEND", " ")])
def test_bad_environment_value_warns_and_keeps_file_value(tmp_path, variable, value):
    write_config(tmp_path, {"floatx": "float64", "epsilon": 1e-3})
    state, stderr = state_in_child(home=tmp_path, env={variable: value})
    assert state["floatx"] == "float64" and state["epsilon"] == 1e-3
    assert stderr.count("RuntimeWarning") == 1 and variable in stderr


def test_unreadable_bytes_warn(tmp_path):
    (tmp_path / "gpukb.json").write_bytes(b"\xff\xfe\x00garbage")
    state, stderr = state_in_child(home=tmp_path)
    assert state["floatx"] == "float32" and stderr.count("RuntimeWarning") == 1


def test_import_never_writes_the_config_folder(tmp_path):
    home = tmp_path / "not_yet"
    result = run_python("import gpukb", home=tmp_path, env={"GPUKB_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert not home.exists()


def test_default_config_folder_is_under_home(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUKB_")}
    env["HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", "import gpukb._state as s; print(s.config_path())"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / ".gpukb" / "gpukb.json")


# ---------------------------------------------------------------------- files that must not break import

DEEP = 100_000


@pytest.mark.parametrize("content, words", [
    ('{"floatx": ' + "[" * DEEP + "]" * DEEP + "}", "RecursionError"),  # json.loads recursion
    ("[" * DEEP + "]" * DEEP, "RecursionError"),
    ('{"floatx": "float64"}' + " " * (1 << 20), "larger than 1048576 bytes"),  # valid, but too big
], ids=["nested-value", "nested-top", "over-1MiB"])
def test_a_pathological_file_warns_once_and_keeps_the_defaults(tmp_path, content, words):
    path = write_config(tmp_path, content)
    state, stderr = state_in_child(home=tmp_path)
    assert state["floatx"] == "float32" and state["epsilon"] == 1e-07
    assert stderr.count("RuntimeWarning") == 1 and str(path) in stderr and words in stderr


def test_an_epsilon_too_large_for_a_float_warns_naming_the_key(tmp_path):
    path = write_config(tmp_path, '{"epsilon": 1' + "0" * 400 + ', "floatx": "float64"}')
    state, stderr = state_in_child(home=tmp_path)
    assert state["epsilon"] == 1e-07 and state["floatx"] == "float64"
    assert stderr.count("RuntimeWarning") == 1 and f"{path}: key 'epsilon'" in stderr
    assert "OverflowError" not in stderr


def _make_fifo(path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(path)


def _make_device(path):
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null on this platform")
    os.symlink("/dev/null", path)  # os.stat follows the link: a character device


@pytest.mark.parametrize("make, kind", [
    (os.mkdir, "a directory"),
    (_make_fifo, "a FIFO"),  # reading it would wait for a writer forever; the child has a timeout
    (_make_device, "a device"),
], ids=["directory", "fifo", "device"])
def test_a_config_path_that_is_not_a_regular_file_warns_and_never_blocks(tmp_path, make, kind):
    path = tmp_path / "gpukb.json"
    make(path)
    state, stderr = state_in_child(home=tmp_path)
    assert state["floatx"] == "float32" and state["epsilon"] == 1e-07
    assert stderr.count("RuntimeWarning") == 1 and f"{path}: it is {kind}" in stderr


# ---------------------------------------------------------------------- where the warnings point

USER_SCRIPT = """\
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import gpukb
print(json.dumps([[w.filename, w.lineno, w.category.__name__] for w in caught]))
"""


@pytest.mark.parametrize("config, env", [
    ({"floatx": "float8"}, {}),
    ("{not json", {}),
    ({}, {"GPUKB_EPSILON": "tiny"}),
], ids=["bad-value", "malformed-file", "bad-variable"])
def test_config_warnings_point_at_the_users_import_line(tmp_path, config, env):
    write_config(tmp_path, config)
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT)
    result = run_python(f"import runpy; runpy.run_path({str(script)!r})", home=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    caught = json.loads(result.stdout.strip().splitlines()[-1])
    assert caught == [[str(script), 4, "RuntimeWarning"]]
