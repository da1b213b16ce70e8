"""Helpers for tests that need a fresh interpreter (import-time behaviour, config, env vars)."""

import json
import os
import subprocess
import sys


def run_python(code, *, home, env=None, cwd=None):
    """Run ``code`` in a fresh interpreter with GPUKB_HOME=home; return the CompletedProcess.

    The child runs from ``home`` (not the repository), so it imports the installed gpukb, and
    inherits no GPUKB_* variables except those given in ``env``.
    """
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("GPUKB_")}
    child_env["GPUKB_HOME"] = str(home)
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", code],
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
