"""Helpers for tests that need a fresh interpreter (import-time behaviour, config, env vars)."""

import json
import os
import subprocess
import sys


def run_python(code, *, home, env=None, cwd=None, argv=None):
    """Run ``code`` in a fresh interpreter with GPUKB_HOME=home (``argv``: its sys.argv[1:]);
    return the CompletedProcess.

    The child runs from ``home`` (not the repository), so it imports the installed gpukb, and
    inherits no GPUKB_* variables except those given in ``env``.
    """
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("GPUKB_")}
    child_env["GPUKB_HOME"] = str(home)
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", code, *(argv or [])],
        cwd=cwd or str(home), env=child_env, capture_output=True, text=True, timeout=120,
    )


def state_in_child(*, home, env=None):
    """(settings dict, stderr) as a fresh ``import gpukb`` sees them."""
    code = (
        "import json, gpukb\n"
        "print(json.dumps({'floatx': gpukb.floatx(), 'epsilon': gpukb.epsilon(),"
        " 'image_data_format': gpukb.image_data_format(),"
        " 'backend': gpukb._state.configured_backend()}))\n"
    )
    result = run_python(code, home=home, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def bench(argv, capsys):
    """Run ``gpukb bench`` in this process; (exit code, stdout, stderr)."""
    from gpukb import cli

    try:
        code = cli.main(["bench", *argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def cell_of_kind(kind, rng, D, H, dtype="float64", simple_activation="tanh"):
    """``(cell, number of states)``: a ``gpukb.cells`` cell of ``kind`` ("lstm", "gru",
    "gru_before" or "simple_rnn") with weights drawn from ``rng`` (scale 0.5)."""
    import gpukb

    def w(*shape):
        return (0.5 * rng.standard_normal(shape)).astype(dtype)

    if kind == "lstm":
        return gpukb.cells.lstm(w(D, 4 * H), w(H, 4 * H), w(4 * H)), 2
    if kind == "gru":
        return gpukb.cells.gru(w(D, 3 * H), w(H, 3 * H), w(2, 3 * H), reset_after=True), 1
    if kind == "gru_before":
        return gpukb.cells.gru(w(D, 3 * H), w(H, 3 * H), w(3 * H), reset_after=False), 1
    return gpukb.cells.simple_rnn(w(D, H), w(H, H), w(H), activation=simple_activation), 1
