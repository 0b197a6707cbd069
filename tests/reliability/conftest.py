"""One real server as in production (default limits, an API key), for the tests that need no settings of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.live_server import LiveServer, live_server
from tests.reliability.server_support import API_KEY


@pytest.fixture(scope="package")
def shared_server(served_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`python -m app` with every limit at its default and ALEXNET_API_KEY set, on a free loopback port."""
    env = {"ALEXNET_API_KEY": API_KEY}
    with live_server(served_model_path, tmp_path_factory.mktemp("shared-server"), env) as server:
        yield server
