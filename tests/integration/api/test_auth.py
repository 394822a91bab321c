"""API keys: every route but health needs one of FACESCAN_API_KEYS, wrong ones are
refused before the body is read, keys are never logged, and the server refuses to start
without keys (unless --no-auth on loopback), through both command lines."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.api.support import DETECTOR, FACESCAN, KEYS, SAMPLES, ApiServer, server_env

pytestmark = pytest.mark.slow

OBAMA = (SAMPLES / "obama.jpg").read_bytes()


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", f"Bearer {KEYS[0]}x", f"Basic {KEYS[0]}", "Bearer ", KEYS[0]],
    ids=["none", "wrong", "longer", "basic", "empty", "no-scheme"],
)
@pytest.mark.parametrize("path", ["/detect", "/metrics", "/openapi.json", "/nothing"])
def test_every_route_but_health_refuses_a_missing_or_wrong_key(
    server: ApiServer, authorization: str | None, path: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    method = "POST" if path == "/detect" else "GET"
    answer = server.request(method, path, OBAMA if method == "POST" else None, headers)
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["error"] == "unauthorized"


@pytest.mark.parametrize("key", KEYS)
def test_each_key_is_accepted(server: ApiServer, key: str) -> None:
    assert server.detect(OBAMA, key=key).status == 200
    assert (
        server.request("GET", "/metrics", headers={"Authorization": f"bearer {key}"}).status == 200
    )


@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready"])
def test_health_needs_no_key(server: ApiServer, path: str) -> None:
    assert server.request("GET", path).status == 200


def test_keys_are_never_logged(server: ApiServer) -> None:
    server.detect(OBAMA, key=KEYS[1])
    server.detect(OBAMA, key="wrong-key-ab12")
    log = server.output()
    assert "POST /detect" in log  # -v: every request is logged
    assert not any(secret in log for secret in (*KEYS, "wrong-key-ab12"))


def refused(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=server_env(**env), capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("program", [DETECTOR, FACESCAN], ids=["facescan-detector", "facescan"])
def test_serve_refuses_to_start_without_keys(program: Path) -> None:
    command = [str(program), "serve", "--port", "1"]
    for run in (refused(command), refused(command, FACESCAN_API_KEYS=" , ")):
        assert run.returncode == 2
        assert "no API keys: set FACESCAN_API_KEYS" in run.stderr
    off_loopback = refused([*command, "--no-auth", "--host", "0.0.0.0"])
    assert off_loopback.returncode == 2
    assert "--no-auth serves this machine only" in off_loopback.stderr


def test_facescan_serve_execs_the_detectors_server_without_keys_on_loopback(
    tmp_path: Path,
) -> None:
    args = ["--no-auth", "--threads", "1"]
    api = ApiServer(args, server_env(), tmp_path / "server.log", program=FACESCAN)
    answer = api.detect(OBAMA, key=None)
    assert answer.status == 200
    assert "no authentication" in api.output()
    assert api.stop() == 0
