"""The operator's database of a FaceScan, read from its Secret: a malformed URL is the
FaceScan's Secret trouble (reason DatabaseSecret), a well-formed one out of reach is
DatabaseUnavailable, and neither the error, the log, the status nor the Event text holds
the password. `Shared.queue` (k8s/state.py) is what each reconcile connects through."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import kopf
import pytest
import yaml

from facescan_devcluster.controlplane import free_port
from facescan_operator.k8s import handlers
from facescan_operator.k8s.kube import SecretError
from facescan_operator.k8s.spec import FaceScanSpec
from facescan_operator.k8s.state import Shared, shared
from facescan_operator.k8s.status import unreachable
from facescan_queue.errors import DatabaseUnavailable

SECRETS = ("hunter2Q", "zebra9K")
UID = "0b6f3c3e-credential-test"
EXAMPLE = yaml.safe_load((Path(__file__).parents[3] / "examples" / "facescan.yaml").read_text())
SPEC = FaceScanSpec.model_validate(EXAMPLE["spec"])  # Secret facescan-db, key dsn


PORT = free_port()  # nothing listens there


class _SecretHolding:
    """The cluster API as `Shared.queue` uses it: one Secret key, holding ``dsn``."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def read_secret(self, namespace: str, name: str, key: str) -> str:
        assert (namespace, name, key) == ("photos", "facescan-db", "dsn")
        return self.dsn


@pytest.fixture
async def operator(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Shared]:
    """The operator's shared state, as its startup handler makes it (no metrics server)."""
    monkeypatch.setenv("FACESCAN_METRICS_PORT", "0")
    memo = kopf.Memo()
    await handlers.configure(settings=kopf.OperatorSettings(), memo=memo)
    made = shared(memo)
    yield made
    await made.forget(UID)


async def _connect_through(
    operator: Shared, dsn: str, caplog: pytest.LogCaptureFixture
) -> Exception:
    operator.kube = _SecretHolding(dsn)  # type: ignore[assignment]
    caplog.set_level(logging.DEBUG)
    with pytest.raises((SecretError, DatabaseUnavailable)) as raised:
        await operator.queue(UID, "photos", SPEC)
    return raised.value


def _shown(exc: Exception) -> str:
    """Everything a reconcile shows of the error: the status it writes (the Degraded
    condition's message) and the Event's message."""
    reason = "DatabaseUnavailable" if isinstance(exc, DatabaseUnavailable) else "DatabaseSecret"
    status = unreachable({}, reason, str(exc), datetime.now(UTC))
    return json.dumps(status) + "\n" + str(exc)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://alice:hunter2Q/zebra9K@127.0.0.1:PORT/photos",
        "postgresql://alice:hunter2Q#zebra9K@127.0.0.1:PORT/photos",
        "postgresql://alice:hunter2Q@zebra9K@127.0.0.1:PORT/photos",
        "hunter2Qzebra9K",
        "postgresql://alice:hunter2Qzebra9K/photos",
        "postgresql://alice@127.0.0.1:PORT/photos?password=hunter2Q&zebra9K",
    ],
)
async def test_a_malformed_url_in_the_secret_is_named_by_the_secret_not_quoted(
    dsn: str, operator: Shared, caplog: pytest.LogCaptureFixture
) -> None:
    # the port is filled in here: a test's id must be the same in every xdist worker
    exc = await _connect_through(operator, dsn.replace(":PORT/", f":{PORT}/"), caplog)
    assert isinstance(exc, SecretError)
    assert str(exc).startswith("Secret photos/facescan-db key 'dsn': the database URL is malformed")
    assert exc.__cause__ is None  # no chained error, whose text would hold the URL
    assert exc.__suppress_context__
    for secret in SECRETS:
        assert secret not in _shown(exc)
        assert secret not in caplog.text


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://alice:hunter2Q%2F%40zebra9K@127.0.0.1:PORT/photos",
        "postgresql://alice@127.0.0.1:PORT/photos?password=hunter2Qzebra9K",
    ],
)
async def test_a_database_out_of_reach_is_named_by_host_port_and_database(
    dsn: str, operator: Shared, caplog: pytest.LogCaptureFixture
) -> None:
    # the port is filled in here: a test's id must be the same in every xdist worker
    exc = await _connect_through(operator, dsn.replace(":PORT/", f":{PORT}/"), caplog)
    assert isinstance(exc, DatabaseUnavailable)
    assert f"127.0.0.1:{PORT}/photos" in str(exc)
    for secret in SECRETS:
        assert secret not in _shown(exc)
        assert secret not in caplog.text
