"""The README's Python examples run as written: here, and after the README's own install
(``python3 -m pip install .``) in a fresh virtual environment, from outside the checkout.

Every ```python block runs, in its own interpreter, except one preceded by an HTML comment
``<!-- not run: why -->`` (a signature, say). One preceded by ``<!-- needs MODULE: why -->`` (a
plugin's example) runs where MODULE is installed: here with the test suite's install, not in the
fresh environment of ``pip install .``. gpukb's RuntimeWarnings are errors: an example that falls
back (a jit_step Numba cannot compile, say) does not run as documented.
"""

import importlib.util
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
_BLOCK = re.compile(r"(<!-- not run: [^>]*-->\n)?(?:<!-- needs ([\w.]+): [^>]*-->\n)?```python\n(.*?)```", re.S)

pytestmark = pytest.mark.skipif(not README.exists(), reason="needs the checkout's README.md")


def readme_blocks() -> list[tuple[int, str, str | None]]:
    """(line number, code, the module it needs or None) of every README Python block meant to run."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(3)) + 1, m.group(3), m.group(2)) for m in _BLOCK.finditer(text)
            if not m.group(1)]


def readme_examples(with_needs: bool = True) -> list[tuple[int, str]]:
    """(line number, code) of the blocks meant to run; without ``with_needs``, only those that
    need nothing beyond gpukb."""
    return [(line, code) for line, code, needs in readme_blocks() if with_needs or needs is None]


def _example_params():
    return [pytest.param(line, code, marks=pytest.mark.skipif(
                needs is not None and importlib.util.find_spec(needs) is None, reason=f"needs {needs}"))
            for line, code, needs in readme_blocks()]


def run_example(python: str, code: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUKB_", "PYTHON"))}
    env["GPUKB_HOME"] = str(home)
    return subprocess.run([python, "-W", "error::RuntimeWarning", "-c", code], cwd=home, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_readme_has_examples_and_the_markers_work():
    examples = readme_examples()
    assert len(examples) >= 3
    assert all("gpukb" in code for _, code in examples)
    assert not any("gpukb.rnn(\n    step_function, inputs" in code for _, code in examples)
    assert len(readme_examples(with_needs=False)) < len(examples)  # the dask example needs gpukb_dask


@pytest.mark.parametrize("line,code", _example_params(), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_readme_example_runs(line, code, tmp_path):
    result = run_example(sys.executable, code, tmp_path)
    assert result.returncode == 0, f"README.md line {line}:\n{result.stderr}"


@pytest.mark.slow
def test_readme_examples_run_after_the_readme_install_in_a_fresh_environment(tmp_path):
    # What a new user does: a fresh venv, the README's first install command from the clone, then
    # the examples, from outside the checkout (so the clone's gpukb/ cannot shadow the install).
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "."], cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    home = tmp_path / "home"
    home.mkdir()
    for line, code in readme_examples(with_needs=False):
        result = run_example(python, code, home)
        assert result.returncode == 0, f"README.md line {line}:\n{result.stderr}"
