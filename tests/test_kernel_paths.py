"""The CPU kernel paths still compute what the golden corpus recorded (tests/fixtures/kernel_paths).

The corpus was recorded before the kernel-layer refactor (issue 11), whose rule is that results do
not change: every recorded call runs again down its path (fused LSTM/GRU/SimpleRNN kernels, the
``jit_step`` time loop) and must give float64 results bitwise equal to the record (within 4 ulp on
another CPU than the record's), float32 results
within 2 ulp (``np.testing.assert_array_max_ulp``). The simulator paths of the cuda backend are in
``tests/cuda_sim/test_sim_kernel_paths.py``. To re-record (only when a result is meant to change):
``python tests/fixtures/kernel_paths/make_kernel_paths.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

import gpukb

RECORDER = Path(__file__).resolve().parent / "fixtures" / "kernel_paths" / "make_kernel_paths.py"


def load_recorder():
    spec = importlib.util.spec_from_file_location("make_kernel_paths", RECORDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


corpus = load_recorder()
MANIFEST = corpus.load_manifest()
CASES = MANIFEST["parts"]["cpu"]


@pytest.fixture(scope="module")
def recorded():
    return corpus.load_part("cpu")


@pytest.mark.parametrize("spec", CASES, ids=[spec["id"] for spec in CASES])
def test_cpu_path_gives_the_recorded_results(spec, recorded):
    inputs, outputs = recorded[spec["id"]]
    got = corpus.run_case(spec, inputs)
    corpus.assert_matches_record(spec, got, outputs, MANIFEST["environment"])


def test_the_corpus_covers_every_cpu_path_and_option():
    coverage = MANIFEST["coverage"]
    fused, jit = coverage["cpu_fused"], coverage["cpu_jit"]
    assert set(fused["kind"]) == {"lstm", "gru", "gru_before", "simple_rnn"}
    for table in (fused, jit):
        assert set(table["dtype"]) == {"float32", "float64"}
        assert set(table["mask"]) == {"none", "random", "input_length"}
        assert set(table["B"]) == {"1", "3", "17"} and set(table["T"]) == {"1", "5", "40"}
        for flag in ("go_backwards", "zero_output_for_mask", "return_all_outputs", "time_major"):
            assert set(table[flag]) == {"True", "False"}, flag
    assert set(fused["use_bias"]) == {"True", "False"}
    # Every activation the corpus was recorded with. Added since, and so not in the corpus:
    # hard_sigmoid_keras3 (tests/test_kernels_cpu.py and tests/test_activations.py check it).
    # Any other new activation needs cases here (and a re-record).
    names = set(gpukb.activations.SUPPORTED) - {"hard_sigmoid_keras3"}
    assert set(corpus.ACTIVATIONS) == names
    assert set(fused["activation"]) == names
    assert set(fused["recurrent_activation"]) == names | {"None"}   # None: SimpleRNN
    assert set(jit["step"]) == {"one_state", "two_states", "three_states"}
    assert any(spec.get("splits_batch") for spec in CASES)


def test_the_manifest_lists_what_the_recorder_generates():
    """Editing the case list without re-recording would test stale cases: caught here."""
    recorded_specs = [{k: v for k, v in spec.items() if k != "outputs"} for spec in CASES]
    assert recorded_specs == corpus.case_specs("cpu")


def test_the_npz_files_are_the_recorded_ones():
    for name, entry in MANIFEST["files"].items():
        data = (RECORDER.parent / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name


def test_the_comparison_is_bitwise_on_the_records_cpu_and_within_a_few_ulp_elsewhere():
    import numpy as np

    spec = {"id": "x", "outputs": 1}
    want = np.array([0.5, 0.25, -1.0])
    one_ulp = np.nextafter(want, np.inf)
    far = want + 8 * np.spacing(want)
    here = corpus.platform_environment()
    elsewhere = dict(here, cpu="another CPU")
    corpus.assert_matches_record(spec, [want.copy()], {"out0": want}, here)
    with pytest.raises(AssertionError, match="1 of 3 float64 values differ"):
        corpus.assert_matches_record(spec, [np.where([True, False, False], one_ulp, want)],
                                     {"out0": want}, here)
    corpus.assert_matches_record(spec, [one_ulp], {"out0": want}, elsewhere)
    with pytest.raises(AssertionError, match="another CPU"):
        corpus.assert_matches_record(spec, [far], {"out0": want}, elsewhere)
