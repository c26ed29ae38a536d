"""Session-wide fixtures: one temporary Prefect server for the whole run, and the shared sample data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("EMBEDPIPE_HOME", str(Path(__file__).resolve().parent.parent / "work" / "test"))

from flows.environment import apply_defaults  # noqa: E402

apply_defaults()

DATA = Path(os.environ.get("EMBEDPIPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only sample data beside the repository (../shared/data); never written to."""
    if not DATA.is_dir():
        pytest.fail(f"sample data not found at {DATA}; set EMBEDPIPE_SHARED_DATA to the shared/data folder")
    return DATA


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite in a temp folder) for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def store(tmp_path):
    from storage import Store

    return Store(tmp_path / "store")
