"""Command lines: ``gpukb`` (--version, --help), ``python -m gpukb.bench.cuda``."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gpukb
from gpukb import cli
from gpukb.bench import command


def run_cli(argv, capsys):
    """``gpukb ARGV`` in this process; (exit code, stdout, stderr)."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, err = run_cli(["--version"], capsys)
    assert code == 0, err
    assert out.strip() == f"gpukb {gpukb.__version__}"


@pytest.mark.parametrize("argv", [["--help"], ["bench", "--help"], ["info", "--help"]])
def test_help_is_plain_text(argv, capsys):
    """argparse prints help text as it is: reST markup (``code``, :func:) would show raw."""
    code, out, _ = run_cli(argv, capsys)
    assert code == 0
    assert "usage: gpukb" in out
    for markup in ("``", ":func:", ":class:", ":mod:"):
        assert markup not in out


def _bench_help(capsys) -> str:
    code, out, _ = run_cli(["bench", "--help"], capsys)
    assert code == 0
    return " ".join(out.split())  # argparse wraps lines wherever it likes


def _stated_defaults(help_text: str, option: str) -> tuple[str, str]:
    """(full default, --quick default) as ``gpukb bench --help`` states them for ``option``."""
    match = re.search(re.escape(option) + r" \S+ [^(]*\(default: ([^;)]+?)"
                      r"(?:; --quick: ([^)]+)|, also with --quick)\)", help_text)
    assert match, f"no default stated for {option} in: {help_text}"
    full, quick = match.group(1), match.group(2) or match.group(1)
    return full, quick


def _settings(argv):
    parser = cli.build_parser()
    args = parser.parse_args(["bench", *argv])
    return command.validate(args, parser)


@pytest.mark.parametrize("option, setting, parse", [
    ("--repeats", "repeats", int),
    ("--budget", "budget", float),
    ("--sizes", "sizes", lambda text: text.split()),
])
def test_bench_help_states_the_defaults_the_run_uses(option, setting, parse, capsys):
    full, quick = _stated_defaults(_bench_help(capsys), option)
    for argv, stated in (([], full), (["--quick"], quick)):
        used = _settings(argv)[setting]
        if setting == "sizes":
            used = [size.key for size in used]
        assert parse(stated) == used, (option, argv)


def test_bench_help_lists_every_peer(capsys):
    from gpukb.bench import peers

    text = _bench_help(capsys)
    assert f"comma-separated peers among {', '.join(peers.PEER_NAMES)} " in text
    assert "onnxruntime" in peers.PEER_NAMES
    assert peers.INSTALL_PEERS in text


EMBEDDING_MODEL = (Path(__file__).resolve().parent / "fixtures" / "keras_models"
                   / "embedding_mask_lstm.keras3.keras")


def test_bench_help_describes_the_model_options(capsys):
    """--model, --steps and --batch-sizes are listed, with the defaults the run uses."""
    from gpukb.bench import model_command, model_peers, models

    text = _bench_help(capsys)
    for option in ("--model PATH", "--steps T", "--batch-sizes LIST"):
        assert option in text
    assert model_peers.INSTALL_MODEL_PEERS in text
    assert f"with --model: among keras3 (every backend), {', '.join(model_peers.MODEL_PEER_NAMES)}" \
        in text
    full, quick = _stated_defaults(text, "--batch-sizes")
    parser = cli.build_parser()
    for argv, stated in (([], full), (["--quick"], quick)):
        args = parser.parse_args(["bench", "--model", str(EMBEDDING_MODEL), *argv])
        assert model_command.validate(args, parser)["batch_sizes"] == [int(b) for b in stated.split()]
    assert _stated_defaults(text, "--steps") == (str(models.DEFAULT_STEPS),) * 2


def _cuda_available() -> bool:
    from gpukb import _dispatch

    records = {r.name: r for r in _dispatch.backend_records()}
    return bool(records["cuda"].availability)


def test_cuda_benchmark_without_a_gpu_says_why_in_one_line(tmp_path):
    if os.environ.get("NUMBA_ENABLE_CUDASIM") not in (None, "", "0") or _cuda_available():
        pytest.skip("the cuda backend can run here (GPU or simulator)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    result = subprocess.run([sys.executable, "-m", "gpukb.bench.cuda"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "the cuda backend is not available" in lines[0]
    assert "pip install" in lines[0]
