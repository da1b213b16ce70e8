"""gpukb-dask on Dask's local (threaded) scheduler: discovery, the conformance suite, lazy results
with the right shapes, chunks and meta, bit-for-bit agreement with one process, alignment of
NumPy and differently chunked arguments, and every error before anything is computed."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="gpukb-dask needs Dask")
pytest.importorskip("gpukb_dask", reason="gpukb-dask is not installed (pip install -e plugins/gpukb-dask)")

import dask

import gpukb
from gpukb.testing.test_conformance import (  # noqa: F401  (pytest collects the imported tests)
    test_errors_come_before_any_step,
    test_generic_step_matches_reference,
    test_keras_cells_match_reference,
    test_returns_the_backends_array_type,
)
from gpukb_dask_fake_device import DeviceArray
from gpukb_dask_test_steps import lstm_problem


@pytest.fixture(scope="module")
def backend():
    """The conformance suite's backend: this plugin's (as GPUKB_TEST_BACKEND=dask would pick)."""
    return gpukb.get_backend("dask")


def _nothing_may_run(dsk, keys, **kwargs):
    raise AssertionError("a Dask computation was started")


def assert_close(got, expected):
    """For NumPy step functions: NumPy's matmul (BLAS) may round a row differently in a smaller
    batch, so blocks agree with one process to rounding, not necessarily bit for bit."""
    for g, e in zip(gpukb_leaves(got), gpukb_leaves(expected), strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)


def assert_same_bits(got, expected):
    got_leaves, expected_leaves = gpukb_leaves(got), gpukb_leaves(expected)
    assert len(got_leaves) == len(expected_leaves)
    for g, e in zip(got_leaves, expected_leaves):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_array_equal(g, e)


def gpukb_leaves(tree):
    import optree

    return optree.tree_leaves(tree)


def test_plugin_is_discovered_and_available():
    assert "dask" in gpukb.list_backends()
    record = {r.name: r for r in gpukb._dispatch.backend_records()}["dask"]
    assert record.availability and record.distribution == "gpukb-dask"


def test_discovery_and_numpy_calls_do_not_import_dask(tmp_path):
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import gpukb

        assert "dask" in gpukb.list_backends() and gpukb.backend_available("dask")
        gpukb.rnn(lambda x, s: (x + s[0], [x + s[0]]), np.ones((2, 3, 1)), [np.zeros((2, 1))])
        assert "dask" not in sys.modules, "dask was imported"
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, GPUKB_HOME=str(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_results_are_lazy_dask_arrays_with_shapes_chunks_and_meta():
    cell, x, states, mask = lstm_problem(batch=10, steps=6)
    xd = da.from_array(x, chunks=(4, 2, 2))  # time and features chunked too: merged for the rnn
    with dask.config.set(scheduler=_nothing_may_run):
        last, outputs, new_states = gpukb.rnn(cell, xd, states, mask=mask)
    assert isinstance(new_states, list) and len(new_states) == 2
    for array, shape in [(last, (10, 4)), (outputs, (10, 6, 4)), (new_states[0], (10, 4))]:
        assert isinstance(array, da.Array) and array.shape == shape and array.dtype == np.float32
        assert array.chunks[0] == (4, 4, 2) and all(len(c) == 1 for c in array.chunks[1:])
        assert type(array._meta) is np.ndarray and array._meta.dtype == np.float32
    _, outputs_tm, _ = gpukb.rnn(cell, xd.transpose(1, 0, 2), states, time_major=True,
                                 return_all_outputs=False)
    assert outputs_tm.shape == (1, 10, 4) and outputs_tm.chunks == ((1,), (4, 4, 2), (4,))


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn"])
def test_keras_cells_on_blocks_equal_one_process_bit_for_bit(kind):
    """The fused kernels give a row the same bits whatever the batch around it (kernels/cpu/_gemm.py),
    so splitting the batch changes nothing."""
    rng = np.random.default_rng(1)
    B, T, D, H = 23, 9, 5, 6
    gates = {"lstm": 4, "gru": 3, "simple_rnn": 1}[kind]
    bias = (2, 3 * H) if kind == "gru" else (gates * H,)  # GRU: reset_after's two biases
    weights = [rng.standard_normal(s).astype(np.float32) / 2 for s in ((D, gates * H), (H, gates * H), bias)]
    cell = getattr(gpukb.cells, kind)(*weights)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    states = [rng.standard_normal((B, H)).astype(np.float32) for _ in cell.state_size]
    mask = rng.random((B, T)) < 0.6
    lengths = rng.integers(0, T + 1, B)
    xd = da.from_array(x, chunks=(5, 4, 5))
    for options in (dict(mask=mask, go_backwards=True), dict(input_length=lengths, zero_output_for_mask=True),
                    dict(return_all_outputs=False), dict(mask=da.from_array(mask, chunks=(7, 9)))):
        expected = gpukb.rnn(cell, x, states, **{k: np.asarray(v) for k, v in options.items()
                                                 if k in ("mask", "input_length")},
                             **{k: v for k, v in options.items() if k not in ("mask", "input_length")})
        got = dask.compute(*gpukb.rnn(cell, xd, states, **options))
        assert_same_bits(got, expected)


def test_time_major_masks_lengths_and_constants_align_to_the_input_chunks():
    rng = np.random.default_rng(2)
    B, T = 11, 5
    x = rng.standard_normal((T, B, 2))
    h = rng.standard_normal((B, 3))
    context = rng.standard_normal((B, 2))      # per sample: split with the batch
    scale = rng.standard_normal((2, 3))        # whole: the same for every block
    w = rng.standard_normal((2, 3))

    def step(xt, states):
        h_prev, ctx, s = states
        h_new = np.tanh(xt @ w + h_prev + ctx @ s)
        return {"h": h_new, "twice": 2 * h_new}, [h_new]

    mask = rng.random((T, B)) < 0.7
    lengths = rng.integers(0, T + 1, B)
    expected = gpukb.rnn(step, x, [h], mask=mask, constants=[context, scale], time_major=True)
    got = gpukb.rnn(step, da.from_array(x, chunks=(2, 4, 1)), [da.from_array(h, chunks=(3, 3))],
                    mask=da.from_array(mask, chunks=(5, 6)), time_major=True,
                    constants=[da.from_array(context, chunks=(5, 2)), scale])
    assert set(got[1]) == {"h", "twice"} and got[1]["h"].chunks[1] == (4, 4, 3)
    assert_close(dask.compute(*got), expected)
    expected = gpukb.rnn(step, x, [h], input_length=lengths, constants=[context, scale], time_major=True)
    got = gpukb.rnn(step, da.from_array(x, chunks=(5, 4, 2)), [h], time_major=True,
                    input_length=da.from_array(lengths, chunks=3), constants=[da.from_array(context), scale])
    assert_close(dask.compute(*got), expected)


def test_a_step_that_cannot_take_an_empty_batch_is_probed_with_one_sample():
    calls = []

    def step(xt, states):
        calls.append(xt.shape[0])
        flat = xt.reshape(xt.shape[0], -1)  # NumPy cannot infer -1 for an empty batch
        return flat, [states[0] + flat.sum(axis=1, keepdims=True)]

    x = np.arange(24.0).reshape(4, 3, 2, 1)
    h = np.zeros((4, 1))
    got = gpukb.rnn(step, da.from_array(x, chunks=(2, 3, 2, 1)), [h])
    assert calls == [0, 1] and got[1].shape == (4, 3, 2)
    assert_close(dask.compute(*got), gpukb.rnn(step, x, [h]))


def test_bad_calls_raise_gpukbs_error_before_anything_runs():
    calls = []

    def step(xt, states):
        calls.append(1)
        return xt, [xt]

    x = da.ones((6, 4, 2), chunks=(3, 4, 2))
    h = np.zeros((6, 2))
    with dask.config.set(scheduler=_nothing_may_run):
        with pytest.raises(ValueError, match=r"rnn: mask shape \(4, 6\) does not fit the inputs \(B=6, T=4\)"):
            gpukb.rnn(step, x, [h], mask=np.ones((4, 6), bool))
        with pytest.raises(ValueError, match=r"each state must have the batch size B=6 as its first axis; "
                                             r"initial_states\[0\] has shape \(5, 2\)"):
            gpukb.rnn(step, x, [da.zeros((5, 2))], mask=da.ones((6, 4), chunks=2))
        with pytest.raises(TypeError, match="mask must be a boolean, integer or floating array"):
            gpukb.rnn(step, x, [h], mask=np.full((6, 4), "yes"))
        with pytest.raises(ValueError, match=r"input_length values must be <= the time length T=4"):
            gpukb.rnn(step, x, [h], input_length=np.array([1, 2, 3, 4, 5, 1]))
        with pytest.raises(ValueError, match=r"input_length must be an int or a 1-D array .* shape \(B,\)=\(6,\)"):
            gpukb.rnn(step, x, [h], input_length=da.ones(5, dtype=int))
        with pytest.raises(TypeError, match="input_length must hold integers, got dtype float32"):
            gpukb.rnn(step, x, [h], input_length=da.ones(6, dtype=np.float32))
        with pytest.raises(ValueError, match=r"initial_states\[0\] has shape \(2,\), without the batch size B=6 "
                                             r"as its first axis, but the inputs' batch is in 2 chunks"):
            gpukb.rnn(step, x, [np.zeros(2)])
        with pytest.raises(ValueError, match=r"constants\[0\] is a Dask array of shape \(2, 2\); gpukb-dask "
                                             r"splits Dask constants with the batch"):
            gpukb.rnn(step, x, [h], constants=[da.zeros((2, 2))])
        unknown = x[x[:, 0, 0] > 0]
        with pytest.raises(ValueError, match=r"inputs is a Dask array of unknown shape .*compute_chunk_sizes"):
            gpukb.rnn(step, unknown, [h])
        with pytest.raises(TypeError, match=r"initial_states must be a list or tuple"):
            gpukb.rnn(step, x, h)
        device_x = x.map_blocks(DeviceArray, meta=DeviceArray(np.empty((0, 0, 0))))
        with pytest.raises(TypeError, match=r"rnn: inputs is a Dask array of gpukb_dask_fake_device.DeviceArray "
                                            r"chunks, and no installed gpukb backend takes"):
            gpukb.rnn(step, device_x, [h])
        device_h = da.zeros((6, 2)).map_blocks(DeviceArray, meta=DeviceArray(np.empty((0, 0))))
        with pytest.raises(TypeError, match=r"rnn: initial_states\[0\] has gpukb_dask_fake_device.DeviceArray "
                                            r"chunks but the inputs have numpy.ndarray chunks"):
            gpukb.rnn(step, x, [device_h])
        cell, *_ = lstm_problem(units=2)
        with pytest.raises(ValueError, match=r"LSTMCell: step_input must have shape \(batch, 3\), got shape \(0, 2\)"):
            gpukb.rnn(cell, x, [h, h])  # raised by the probe: the Cell's own error, at the call
    assert calls == []


def _scheduled(*collections):
    """The graph the scheduler gets for computing ``collections`` together, optimised."""
    from dask.base import collections_to_expr

    return dict(collections_to_expr(list(collections), optimize_graph=True).optimize().__dask_graph__())


def test_a_block_costs_one_rnn_task_and_one_getitem_per_result_array():
    """What a call adds to the graph of its Dask arguments: per block, the rnn task, a getitem
    per result array (Dask arrays are a key per chunk) and, only when the block's arguments are
    split along time, features or other batch chunks, their rechunk; one key for the Program.
    NumPy states, masks and lengths are sliced into the block tasks: no task of their own."""
    cell, x, states, mask = lstm_problem(batch=12)
    lengths = np.arange(12) % 8
    per_block = 1 + 4  # the rnn, and the getitems of last_output, outputs, h, c
    # more per block: Dask's rechunk (a merge of 3 time chunks; 2 pieces and a merge for a mask in 6s)
    for x_chunks, mask_chunks, more_per_block in [((4, 7, 3), None, 0), ((4, 3, 3), None, 1),
                                                  ((4, 7, 3), (4, 7), 0), ((4, 7, 3), (6, 7), 3)]:
        xd = da.from_array(x, chunks=x_chunks)
        md = mask if mask_chunks is None else da.from_array(mask, chunks=mask_chunks)
        result = gpukb.rnn(cell, xd, states, mask=md)
        arguments = _scheduled(xd) if mask_chunks is None else _scheduled(xd, md)
        added = set(_scheduled(result[0], result[1], *result[2])) - set(arguments)
        assert len(added) <= 3 * (per_block + more_per_block) + 1, (x_chunks, mask_chunks, sorted(map(str, added)))
    result = gpukb.rnn(cell, xd, states, input_length=lengths, go_backwards=True)
    assert len(set(_scheduled(result[0], result[1], *result[2])) - set(_scheduled(xd))) == 3 * per_block + 1


def test_dask_lengths_are_checked_where_they_are_computed():
    x = da.ones((4, 3, 1), chunks=(2, 3, 1))
    got = gpukb.rnn(lambda xt, s: (xt, [xt]), x, [np.zeros((4, 1))], input_length=da.from_array(np.array([1, 2, 3, 9])))
    with pytest.raises(ValueError, match=r"input_length values must be <= the time length T=3 of the inputs, got a length of 9"):
        dask.compute(*got)


def test_a_step_whose_outputs_depend_on_the_batch_is_stopped_in_the_block():
    def step(xt, states):
        out = xt if xt.shape[0] == 0 else xt.astype(np.float32)
        return out, list(states)

    got = gpukb.rnn(step, da.ones((4, 3, 1), chunks=(2, 3, 1)), [np.zeros((4, 1))])
    with pytest.raises(ValueError, match=r"result array 0 of a block has shape \(2, 1\) and dtype float32, but "
                                         r"the step function's answer on an empty batch promised \('batch', 1\) and float64"):
        got[0].compute()


def test_numpy_companions_never_select_the_plugin():
    assert gpukb._dispatch.select_backend([np.zeros(2)]).name == "cpu"
    with pytest.raises(TypeError, match=r"backend 'dask' \(chosen by backend=\) accepts dask.array.core:Array "
                                        r"\(and numpy:ndarray next to those\), but the call has numpy:ndarray"):
        gpukb.rnn(lambda xt, s: (xt, s), np.ones((2, 3, 1)), [np.zeros((2, 1))], backend="dask")


def test_to_numpy_takes_dask_arrays_and_blocks():
    backend = gpukb.get_backend("dask")
    assert backend.to_numpy(da.arange(3)).tolist() == [0, 1, 2]
    assert backend.to_numpy(np.arange(2)).tolist() == [0, 1]
    assert backend.on_clear_session() is False


def test_cupy_chunks_run_on_the_cuda_backend():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed: the CuPy-chunk path is not tested here")
    if not gpukb.backend_available("cuda"):
        pytest.skip(gpukb.backend_available("cuda").reason)
    cell, x, states, mask = lstm_problem()
    expected = gpukb.rnn(cell, x, states, mask=mask)
    xd = da.from_array(x, chunks=(8, 7, 3)).map_blocks(cupy.asarray)
    got = gpukb.rnn(cell, xd, states, mask=mask)
    assert type(got[1]._meta) is cupy.ndarray
    last, outputs, new_states = dask.compute(*got)
    assert type(outputs) is cupy.ndarray
    np.testing.assert_allclose(cupy.asnumpy(outputs), expected[1], rtol=1e-5, atol=1e-6)
