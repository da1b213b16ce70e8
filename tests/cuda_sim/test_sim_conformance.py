"""The plugin conformance suite (gpukb.testing) on the cuda backend, under the CUDA simulator."""

import pytest

from gpukb.testing.test_conformance import (  # noqa: F401  (pytest collects the imported tests)
    test_errors_come_before_any_step,
    test_generic_step_matches_reference,
    test_keras_cells_match_reference,
    test_returns_the_backends_array_type,
)


@pytest.fixture(scope="module")
def backend():
    import gpukb

    backend = gpukb.get_backend("cuda")
    assert backend.simulated
    return backend
