"""The API servers the tests talk to over HTTP: started once per test module (each is a
real process with its detector workers), stopped with SIGTERM, which must end it 0."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.api.support import KEYS, ApiServer, server_env

MAX_UPLOAD_MB = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One hog worker, API keys KEYS, uploads up to 4 MB, every request logged."""
    log = tmp_path_factory.mktemp("api") / "server.log"
    env = server_env(FACESCAN_API_KEYS=",".join(KEYS))
    api = ApiServer(["--max-upload-mb", str(MAX_UPLOAD_MB), "--threads", "1", "-v"], env, log)
    yield api
    assert api.stop() == 0, api.output()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "server.log"
