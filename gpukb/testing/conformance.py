"""What the conformance suite needs to run NumPy-made problems on any backend.

``on_backend`` converts a problem's arrays with the backend's ``asarray``; ``BackendStep`` wraps a
NumPy step function so the backend's loop drives it with its own arrays (the step converts them
to NumPy and back), so the suite checks the backend's rnn semantics whatever its array library.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optree


def backend_under_test() -> str:
    """The backend named by ``GPUKB_TEST_BACKEND`` (default ``cpu``)."""
    import os

    return os.environ.get("GPUKB_TEST_BACKEND", "cpu")


def _is_numpy(x) -> bool:
    return isinstance(x, np.ndarray)


def to_backend(backend, tree):
    return optree.tree_map(lambda x: backend.asarray(x) if _is_numpy(x) else x, tree)


def to_numpy(backend, tree):
    leaves, treespec = optree.tree_flatten(tree)
    if leaves and all(hasattr(leaf, "__dask_graph__") for leaf in leaves):
        # Lazy results (the dask plugin's) are computed together, as a user computes them: each
        # separately would run the rnn once per result.
        import dask

        leaves = list(dask.compute(*leaves))
    return optree.tree_unflatten(
        treespec, [x if isinstance(x, (int, float)) else backend.to_numpy(x) for x in leaves])


class BackendStep:
    """A NumPy step function, callable with the backend's arrays.

    It answers in the array type it is called with: the backend's, or NumPy where the backend
    runs its steps on NumPy pieces of its arrays (the dask plugin's blocks). ``calls`` counts the
    calls on a non-empty batch: a backend may call the step once on an empty batch to learn the
    shapes and dtypes of its outputs before running anything (the dask plugin does, as Dask's
    ``map_blocks`` does), which the one-process semantics of T calls do not count.
    """

    def __init__(self, backend, numpy_step):
        self.backend = backend
        self.numpy_step = numpy_step
        self.calls = 0

    def __call__(self, step_input, states):
        leaves = optree.tree_leaves(step_input)
        if leaves and leaves[0].shape[0] != 0:
            self.calls += 1
        output, new_states = self.numpy_step(to_numpy(self.backend, step_input),
                                             tuple(to_numpy(self.backend, list(states))))
        if all(_is_numpy(leaf) for leaf in leaves):
            return output, new_states
        return to_backend(self.backend, output), to_backend(self.backend, new_states)


def backend_kwargs(backend, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The rnn arguments of a NumPy problem with every array converted to the backend's."""
    converted = dict(kwargs)
    for key in ("inputs", "initial_states", "mask", "constants", "input_length"):
        if converted.get(key) is not None:
            converted[key] = to_backend(backend, converted[key])
    return converted


def assert_close_trees(actual, expected, *, rtol, atol, what):
    """Same structure (containers included) and values within tolerance, leaf by leaf."""
    actual_leaves, actual_spec = optree.tree_flatten(actual)
    expected_leaves, expected_spec = optree.tree_flatten(expected)
    assert actual_spec == expected_spec, f"{what}: structure {actual_spec} != {expected_spec}"
    for i, (a, e) in enumerate(zip(actual_leaves, expected_leaves)):
        assert a.shape == e.shape, f"{what} leaf {i}: shape {a.shape} != {e.shape}"
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"{what} leaf {i}")
