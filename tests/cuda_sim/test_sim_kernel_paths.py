"""The cuda backend's kernel paths, under the CUDA simulator, still compute what the golden corpus
recorded (tests/fixtures/kernel_paths): per-step kernels, the persistent kernel (the planner's
one-block plan, forced plans, and multi-block grid-sync plans with every block running at once),
and the generic loop with the masking kernel. float64 bitwise equal (within 4 ulp on another CPU
than the record's: its BLAS sums in another order), float32 within 2 ulp; see
``tests/test_kernel_paths.py`` for the CPU paths and how to re-record.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

RECORDER = Path(__file__).resolve().parents[1] / "fixtures/kernel_paths/make_kernel_paths.py"


def load_recorder():
    spec = importlib.util.spec_from_file_location("make_kernel_paths", RECORDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


corpus = load_recorder()
MANIFEST = corpus.load_manifest()
CASES = MANIFEST["parts"]["cuda_sim"]


@pytest.fixture(scope="module")
def recorded():
    return corpus.load_part("cuda_sim")


@pytest.mark.parametrize("spec", CASES, ids=[spec["id"] for spec in CASES])
def test_simulated_cuda_path_gives_the_recorded_results(spec, recorded):
    inputs, outputs = recorded[spec["id"]]
    got = corpus.run_case(spec, inputs)
    corpus.assert_matches_record(spec, got, outputs, MANIFEST["environment"])


def test_the_corpus_covers_every_simulated_path():
    coverage = MANIFEST["coverage"]
    assert coverage["sim_persistent"]["launch"]["cooperative"] >= 4
    for path in ("sim_step", "sim_persistent"):
        table = coverage[path]
        assert set(table["kind"]) == {"lstm", "gru", "gru_before", "simple_rnn"}, path
        assert set(table["dtype"]) == {"float32", "float64"}, path
        assert set(table["mask"]) == {"none", "random", "input_length"}, path
        assert set(table["activation"]) == set(corpus.ACTIVATIONS), path
    generic = coverage["sim_generic"]
    assert set(generic["step"]) == {"cell", "one_state", "two_states", "three_states"}
    assert set(generic["kind"]) == {"lstm", "gru", "gru_before", "simple_rnn"}
    assert set(generic["zero_output_for_mask"]) == {"True", "False"}


def test_the_manifest_lists_what_the_recorder_generates():
    recorded_specs = [{k: v for k, v in spec.items() if k != "outputs"} for spec in CASES]
    assert recorded_specs == corpus.case_specs("cuda_sim")
