"""`facescan operator`: where its liveness endpoint and its metrics server bind."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import kopf
import prometheus_client
import pytest
from typer.testing import CliRunner

from facescan_operator import cli
from facescan_operator.k8s import handlers


def _run_operator(monkeypatch: pytest.MonkeyPatch, *args: str) -> dict[str, Any]:
    ran: dict[str, Any] = {}
    monkeypatch.setattr(kopf, "configure", lambda **_: None)  # leaves logging alone
    monkeypatch.setattr(kopf, "run", lambda **kwargs: ran.update(kwargs))
    result = CliRunner().invoke(cli.app, ["operator", *args])
    assert result.exit_code == 0, result.output
    return ran


def test_the_health_endpoint_binds_every_interface_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran = _run_operator(monkeypatch)
    assert ran["liveness_endpoint"] == "http://0.0.0.0:8081/healthz"


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:9100/healthz"),
        ("::1", "http://[::1]:9100/healthz"),
    ],
)
def test_the_health_endpoint_binds_the_address_and_port_given(
    monkeypatch: pytest.MonkeyPatch, address: str, url: str
) -> None:
    ran = _run_operator(monkeypatch, "--health-address", address, "--health-port", "9100")
    assert ran["liveness_endpoint"] == url
    parts = urlsplit(url)  # as kopf reads it
    assert (parts.hostname, parts.port) == (address, 9100)


def test_health_port_0_serves_no_liveness_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = _run_operator(monkeypatch, "--health-port", "0")
    assert ran["liveness_endpoint"] is None


def test_a_health_port_out_of_range_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli.app, ["operator", "--health-port", "70000"])
    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("env", "served"),
    [
        ({}, [(8080, "0.0.0.0")]),
        (
            {"FACESCAN_METRICS_ADDRESS": "127.0.0.1", "FACESCAN_METRICS_PORT": "9101"},
            [(9101, "127.0.0.1")],
        ),
        ({"FACESCAN_METRICS_PORT": "0"}, []),
    ],
)
async def test_the_metrics_server_binds_where_the_environment_says(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], served: list[tuple[int, str]]
) -> None:
    monkeypatch.delenv("FACESCAN_METRICS_ADDRESS", raising=False)
    monkeypatch.delenv("FACESCAN_METRICS_PORT", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    started: list[tuple[int, str]] = []
    monkeypatch.setattr(
        prometheus_client, "start_http_server", lambda port, addr: started.append((port, addr))
    )
    await handlers.configure(settings=kopf.OperatorSettings(), memo=kopf.Memo())
    assert started == served
