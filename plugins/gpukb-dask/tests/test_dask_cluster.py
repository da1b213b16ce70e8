"""gpukb-dask on a real distributed cluster (LocalCluster, worker processes): plain Python steps
and Keras cells, the weights sent to each worker once, and a worker killed mid-computation."""

import logging
import os
import signal
import time

import numpy as np
import pytest

pytest.importorskip("gpukb_dask", reason="gpukb-dask is not installed (pip install -e plugins/gpukb-dask)")
distributed = pytest.importorskip("distributed", reason="the cluster tests need dask.distributed")
da = pytest.importorskip("dask.array")

import dask

import gpukb
import gpukb_dask_fake_device as fake
from gpukb_dask_test_steps import CountedStep, counted_step_problem, lstm_problem, unpickled


def _cluster(workers):
    # One thread per worker, as the README's benchmark; no dashboard (no port to find).
    return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                    dashboard_address=":0", silence_logs=logging.ERROR)


@pytest.fixture(scope="module")
def client():
    """One cluster for the module: starting worker processes takes seconds. Not the default
    scheduler, so other tests keep Dask's local one."""
    with _cluster(2) as cluster, distributed.Client(cluster, set_as_default=False) as client:
        yield client


def test_a_closure_over_numpy_weights_runs_on_the_workers(client):
    weights, x, h0 = counted_step_problem()
    W, U = weights["W"], weights["U"]

    def step(xt, states):  # a plain closure: cloudpickle sends it, weights and all, by value
        h = np.tanh(xt @ W + states[0] @ U)
        return h, [h]

    expected = gpukb.rnn(step, x, [h0])
    got = dask.compute(*gpukb.rnn(step, da.from_array(x, chunks=(8, 6, 3)), [h0]), scheduler=client)
    for g, e in zip([got[0], got[1], got[2][0]], [expected[0], expected[1], expected[2][0]]):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)


def test_keras_cells_on_the_workers_equal_one_process_bit_for_bit(client):
    cell, x, states, mask = lstm_problem(batch=40)
    expected = gpukb.rnn(cell, x, states, mask=mask, go_backwards=True)
    got = dask.compute(*gpukb.rnn(cell, da.from_array(x, chunks=(9, 7, 3)), states, mask=mask,
                                  go_backwards=True), scheduler=client)
    for g, e in zip([got[0], got[1], *got[2]], [expected[0], expected[1], *expected[2]]):
        assert g.dtype == e.dtype
        np.testing.assert_array_equal(g, e)


def test_the_step_and_its_weights_reach_each_worker_once(client):
    """8 blocks on 2 workers: the step is unpickled at most once per worker (a step written into
    every task would be unpickled once per task: about 4 times per worker)."""
    weights, x, h0 = counted_step_problem(batch=32)
    before = client.run(unpickled)
    result = gpukb.rnn(CountedStep(weights), da.from_array(x, chunks=(4, 6, 3)), [h0])
    got = dask.compute(*result, scheduler=client)
    after = client.run(unpickled)
    per_worker = [after[w] - before.get(w, 0) for w in after]
    assert 1 <= sum(per_worker) and max(per_worker) <= 1, per_worker
    np.testing.assert_allclose(got[1], gpukb.rnn(CountedStep(weights), x, [h0])[1], rtol=1e-12, atol=1e-14)


@pytest.fixture
def fake_device(client, tmp_path):
    """The ``fakedevice`` backend (a stand-in for CuPy and the cuda backend) discovered here and
    on the workers; forgotten afterwards."""
    fake.install(str(tmp_path))
    fake.use(str(tmp_path))
    client.run(fake.use, str(tmp_path))
    yield
    client.run(fake.forget, str(tmp_path))
    fake.forget(str(tmp_path))


@pytest.mark.parametrize("mask_chunks", [False, True], ids=["numpy-mask", "mask-in-chunks"])
def test_blocks_of_another_chunk_type_run_on_its_backend_on_the_workers(client, fake_device, mask_chunks):
    """The non-NumPy path (CuPy chunks on the cuda backend) with a stand-in that needs no GPU:
    results declared with the chunk type's meta, each block run by the backend that owns the
    chunk type, on a worker, with the NumPy companions (states, mask, lengths) converted to it.
    A mask in the same chunk type is checked without converting it to NumPy (CuPy refuses; the
    first GPU run of gpu_check.py failed there while building the graph)."""
    cell, x, states, mask = lstm_problem(batch=20)
    expected = gpukb.rnn(cell, x, states, mask=mask)
    meta = fake.DeviceArray(np.empty((0, 0, 0), x.dtype))
    xd = da.from_array(x, chunks=(8, 7, 3)).map_blocks(fake.DeviceArray, meta=meta)
    if mask_chunks:
        mask = da.from_array(mask, chunks=(8, 7)).map_blocks(
            fake.DeviceArray, meta=fake.DeviceArray(np.empty((0, 0), bool)))
    last, outputs, new_states = gpukb.rnn(cell, xd, states, mask=mask)
    for array in (last, outputs, *new_states):
        assert type(array._meta) is fake.DeviceArray and array._meta.dtype == np.float32
        assert array.chunks[0] == (8, 8, 4)
    # The raw blocks, not concatenated; optimize_graph=False, or Dask fuses the block's rnn task into
    # each array's own graph and runs it once per array.
    got = dask.compute(*[block for array in (last, outputs, *new_states)
                         for block in array.to_delayed(optimize_graph=False).ravel()], scheduler=client)
    assert all(type(block) is fake.DeviceArray for block in got)
    for i, want in enumerate([expected[0], expected[1], *expected[2]]):
        np.testing.assert_array_equal(np.concatenate([block.data for block in got[3 * i:3 * i + 3]]), want)
    assert [c[1:] for c in fake.calls()] == [(0, ["DeviceArray"])]  # the probe, on the client
    on_workers = sorted(c[1:] for calls in client.run(fake.calls).values() for c in calls)
    assert on_workers == [(4, ["DeviceArray"])] + [(8, ["DeviceArray"])] * 2


def test_a_worker_killed_mid_computation_loses_nothing(client, tmp_path):
    """Blocks lost with a killed worker process are recomputed elsewhere: same result. Last in
    the module: the killed worker's nanny starts a new one, which no later test needs (it is
    waited for, so that closing the cluster does not wait for a worker still starting)."""
    weights, x, h0 = counted_step_problem(batch=4, steps=3)
    step = CountedStep(weights, delay=0.1, marker=str(tmp_path))
    expected = gpukb.rnn(CountedStep(weights), x, [h0])
    workers = set(client.run(os.getpid).values())
    futures = client.compute(list(gpukb.rnn(step, da.from_array(x, chunks=(2, 3, 3)), [h0])))
    deadline = time.monotonic() + 60
    while not os.listdir(tmp_path):  # wait until a block runs its steps on some worker
        assert time.monotonic() < deadline, "no block started"
        time.sleep(0.01)
    victim = int(os.listdir(tmp_path)[0].split("-")[0])
    assert victim in workers
    os.kill(victim, signal.SIGKILL)
    last, outputs, states = client.gather(futures)
    np.testing.assert_allclose(outputs, expected[1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(states[0], expected[2][0], rtol=1e-12, atol=1e-14)
    # 2 blocks x 3 steps, plus the steps the killed worker ran before it died
    assert len(os.listdir(tmp_path)) > 2 * 3
    client.wait_for_workers(2, timeout=60)


