"""Liveness and readiness apart: with a database configured, readiness (and /health)
include it; a database that does not answer makes the server unready, never dead, and
/health names the database by host:port/database only."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from facescan_queue.settings import parse_dsn
from tests.integration.api.support import DETECTOR, KEYS, ApiServer, server_env

pytestmark = pytest.mark.slow


def test_a_reachable_database_is_part_of_readiness(dsn: str, tmp_path: Path) -> None:
    env = server_env(FACESCAN_API_KEYS=KEYS[0], FACESCAN_DSN=dsn)
    api = ApiServer(["--threads", "1"], env, tmp_path / "server.log")
    try:
        health = api.request("GET", "/health")
        assert health.status == 200
        database = health.json()["database"]
        assert (database["configured"], database["reachable"]) == (True, True)
        assert database["target"] == parse_dsn(dsn).target()  # host:port/database
    finally:
        assert api.stop() == 0


def test_an_unreachable_database_makes_the_server_unready_but_live(tmp_path: Path) -> None:
    url = "postgresql://facescan:s3cret-pw@127.0.0.1:1/photos"
    env = server_env(FACESCAN_API_KEYS=KEYS[0])
    args = ["--threads", "1", "--dsn", url]
    api = ApiServer(args, env, tmp_path / "server.log", wait="/health/live")
    try:
        assert api.request("GET", "/health/live").status == 200
        ready = api.request("GET", "/health/ready")
        assert ready.status == 503
        body = api.request("GET", "/health").json()
        assert (body["status"], body["live"], body["ready"]) == ("unavailable", True, False)
        assert body["database"] == {
            "configured": True,
            "reachable": False,
            "target": "127.0.0.1:1/photos",
        }
        assert body["models_loaded"] == ["hog"]
        assert api.detect(b"x").status == 415  # detection does not need the database
        assert "s3cret-pw" not in api.output() + ready.body.decode()
    finally:
        assert api.stop() == 0


def test_a_malformed_database_url_stops_serve_before_it_starts_quoting_none_of_it() -> None:
    run = subprocess.run(
        [str(DETECTOR), "serve", "--port", "1"],
        env=server_env(FACESCAN_API_KEYS=KEYS[0], FACESCAN_DSN="postgresql://u:pa/ss-9z@h/db"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert "the database URL is malformed" in run.stderr
    assert "pa/ss-9z" not in run.stderr
