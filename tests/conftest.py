"""Shared test set-up: isolate every test from the real home folder and from leaked state."""

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=60, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _isolated_gpukb_home(tmp_path_factory, monkeypatch):
    """No test may read or write ~/.gpukb: point GPUKB_HOME at an empty temporary folder."""
    home = tmp_path_factory.mktemp("gpukb_home")
    monkeypatch.setenv("GPUKB_HOME", str(home))
    for key in ("GPUKB_FLOATX", "GPUKB_EPSILON", "GPUKB_IMAGE_DATA_FORMAT", "GPUKB_BACKEND"):
        monkeypatch.delenv(key, raising=False)
    yield home


@pytest.fixture
def restore_settings():
    """Give a test free use of set_floatx & co., restoring the process-wide values afterwards."""
    import gpukb

    saved = (gpukb.floatx(), gpukb.epsilon(), gpukb.image_data_format())
    yield
    gpukb.set_floatx(saved[0])
    gpukb.set_epsilon(saved[1])
    gpukb.set_image_data_format(saved[2])
