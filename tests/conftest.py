"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from .activator_fixtures import client, instances, make_activator  # noqa: F401 - fixtures, by name
from .ferry_process import FerryProcess
from .kube_fixtures import api_client, fake, make_backend, recorder  # noqa: F401 - fixtures, by name


@pytest.fixture
async def ferry(tmp_path):
    """Make `ferry up` processes in tmp_path; every one is stopped after the test, pass or fail."""
    processes: list[FerryProcess] = []

    def make(workdir=None, **kwargs) -> FerryProcess:
        process = FerryProcess(workdir or tmp_path, **kwargs)
        processes.append(process)
        return process

    yield make
    for process in processes:
        await process.stop()
