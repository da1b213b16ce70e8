"""import gpukb stays light and never breaks."""

import json

from helpers import run_python

HEAVY = ("cupy", "numba", "numba.cuda")


def test_import_does_not_load_cupy_numba_or_numba_cuda(tmp_path):
    code = ("import sys, json, gpukb\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    result = run_python(code, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_public_api_names():
    import gpukb

    for name in ("floatx", "set_floatx", "epsilon", "set_epsilon", "image_data_format",
                 "set_image_data_format", "get_uid", "reset_uids", "clear_session",
                 "placeholder", "is_keras_tensor", "KerasTensor", "__version__"):
        assert name in gpukb.__all__ and hasattr(gpukb, name), name


def test_gpukb_info_prints_the_state(tmp_path):
    (tmp_path / "gpukb.json").write_text(json.dumps({"floatx": "float64"}))
    result = run_python("import sys; from gpukb.cli import main; sys.exit(main(['info']))", home=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    import gpukb

    assert f"gpukb {gpukb.__version__}" in out
    assert f"config file: {tmp_path / 'gpukb.json'}" in out
    assert "floatx" in out and "'float64'" in out and "epsilon" in out and "image_data_format" in out
