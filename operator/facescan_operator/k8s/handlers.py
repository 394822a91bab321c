"""The kopf handlers of the FaceScan operator: a few lines each, all calling reconcile.

Run with `facescan operator` (or `kopf run -m facescan_operator.k8s.handlers -A`). A
timer reconciles every FaceScan level-based; create/update/resume only run it at once.
Deleting a FaceScan deletes its Jobs and hands their images back; results stay in the
database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
from pydantic import SecretStr, ValidationError

from facescan_operator.breaker import CircuitBreaker
from facescan_operator.k8s import metrics
from facescan_operator.k8s.jobs import ScanRef, scan_labels
from facescan_operator.k8s.kube import ClusterApi, SecretError
from facescan_operator.k8s.policy import AdminPolicy, PolicyViolation, enforce
from facescan_operator.k8s.reconcile import changed, reconcile
from facescan_operator.k8s.spec import GROUP, PLURAL, VERSION, FaceScanSpec
from facescan_operator.k8s.status import unreachable, with_generation
from facescan_operator.sizing import CalibrationTable
from facescan_queue.errors import DatabaseUnavailable, QueueError
from facescan_queue.models import AttemptClock
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings, DsnError, parse_dsn

INTERVAL_S = float(os.environ.get("FACESCAN_RECONCILE_INTERVAL_S", "10"))
CALIBRATION = CalibrationTable.load(
    Path(os.environ["FACESCAN_CALIBRATION"]) if os.environ.get("FACESCAN_CALIBRATION") else None
)

_kube: ClusterApi | None = None
_queues: dict[str, Queue] = {}
_breakers: dict[str, CircuitBreaker] = {}
_locks: dict[str, asyncio.Lock] = {}
_invalid: dict[str, str] = {}  # uid -> the invalid-spec message already reported
_clocks: dict[str, AttemptClock] = {}  # uid -> where counting finished attempts stands
_dsns: dict[str, str] = {}  # uid -> the database URL its queue is cached under
_ticks: dict[str, float] = {}  # uid -> when its last reconcile ended (monotonic)
_unreachable: dict[str, str] = {}  # uid -> why its database is out of reach, as reported
log = logging.getLogger(__name__)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # the admin's policy (FACESCAN_POLICY_*): a wrong one stops the operator at its start
    memo.policy = AdminPolicy()
    log.info("admin policy: %s", memo.policy.model_dump_json(by_alias=True))
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    # 0.0.0.0 in a pod, for Prometheus; 127.0.0.1 keeps them on this machine; port 0: none
    port = int(os.environ.get("FACESCAN_METRICS_PORT", "8080"))
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=os.environ.get("FACESCAN_METRICS_ADDRESS", "0.0.0.0"))


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    for queue in _queues.values():
        await queue.close()
    _queues.clear()


def _api() -> ClusterApi:
    global _kube
    if _kube is None:
        _kube = ClusterApi()
    return _kube


async def _queue(uid: str, namespace: str, spec: FaceScanSpec) -> Queue:
    dsn = await _api().read_secret(namespace, spec.database.secret_name, spec.database.key)
    try:
        parse_dsn(dsn)
    except DsnError as exc:  # the FaceScan's DatabaseSecret trouble; quotes none of the URL
        raise SecretError(
            f"Secret {namespace}/{spec.database.secret_name} key {spec.database.key!r}: {exc}"
        ) from None
    _dsns[uid] = dsn
    queue = _queues.get(dsn)
    if queue is None:
        # no migrate here: the schema is the admin's (`facescan db migrate`, the chart's
        # hook Job); a FaceScan's role need not own it, and Queue.connect says what to run
        settings = DatabaseSettings(dsn=SecretStr(dsn))
        queue = _queues[dsn] = await Queue.connect(settings, max_size=4)
    return queue


async def _forget(uid: str) -> None:
    """What was kept for a deleted FaceScan goes; its database pool is closed unless
    another FaceScan uses the same database."""
    for kept in (_breakers, _locks, _invalid, _clocks, _ticks, _unreachable):
        kept.pop(uid, None)
    dsn = _dsns.pop(uid, None)
    if dsn is not None and dsn not in _dsns.values():
        queue = _queues.pop(dsn, None)
        if queue is not None:
            await queue.close()


def invalid_spec_message(exc: ValidationError) -> str:
    """One line naming each refused field by its spec path (pydantic's own text spans
    lines and links to its docs)."""
    problems = []
    for error in exc.errors():
        where = ".".join(["spec", *(str(part) for part in error["loc"])])
        problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "invalid FaceScan spec: " + "; ".join(problems)


def _report_invalid(
    uid: str,
    body: Any,
    status: dict[str, Any],
    patch: kopf.Patch,
    message: str,
    reason: str = "InvalidSpec",
) -> None:
    """An invalid spec (the API server's schema cannot catch all, e.g. a cascade step no
    pool serves) or one outside the admin's policy (reason PolicyViolation): no Jobs,
    phase Invalid with the reason on the Ready condition, and one Warning Event, not one
    per tick."""
    ready: dict[str, Any] = next(
        (c for c in status.get("conditions") or () if c.get("type") == "Ready"), {}
    )
    if _invalid.get(uid) == message or (
        status.get("phase") == "Invalid" and ready.get("message") == message
    ):
        return
    _invalid[uid] = message
    patch.status["phase"] = "Invalid"
    patch.status["conditions"] = [
        {
            "type": "Ready",
            "status": "False",
            "reason": reason,
            "message": message,
            "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    ]
    log.warning("FaceScan %s: %s", body.get("metadata", {}).get("name"), message)
    kopf.warn(body, reason=reason, message=message)


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.timer(GROUP, VERSION, PLURAL, interval=INTERVAL_S, initial_delay=0.5)
async def reconcile_scan(
    spec: Any,
    status: Any,
    namespace: str | None,
    name: str,
    uid: str,
    body: Any,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    assert namespace is not None, "FaceScan is namespaced"
    scan = ScanRef(namespace, name, uid)
    generation = (body.get("metadata") or {}).get("generation")
    try:
        parsed = enforce(memo.policy, FaceScanSpec.model_validate(dict(spec)), namespace)
    except ValidationError as exc:
        _report_invalid(uid, body, dict(status), patch, invalid_spec_message(exc))
        return
    except PolicyViolation as exc:
        message = f"not allowed by the cluster's FaceScan policy: {exc}"
        _report_invalid(uid, body, dict(status), patch, message, reason="PolicyViolation")
        return
    _invalid.pop(uid, None)
    breaker = _breakers.setdefault(uid, CircuitBreaker())
    async with _locks.setdefault(uid, asyncio.Lock()):
        started = time.monotonic()
        try:
            queue = await _queue(uid, namespace, parsed)
            outcome = await reconcile(
                scan,
                parsed,
                queue,
                _api(),
                breaker,
                dict(status),
                calibration=CALIBRATION,
                attempt_clock=_clocks.get(uid),
            )
        except (DatabaseUnavailable, SecretError) as exc:
            # this FaceScan's own trouble, on this FaceScan: the operator serves the others
            # (and its liveness does not depend on any database); the timer tries again
            if isinstance(exc, DatabaseUnavailable):
                breaker.database_down(str(exc), time.time())
            reason = (
                "DatabaseUnavailable" if isinstance(exc, DatabaseUnavailable) else "DatabaseSecret"
            )
            _ticks[uid] = time.monotonic()
            new = unreachable(dict(status), reason, str(exc), datetime.now(UTC))
            new = with_generation(new, generation)
            if _unreachable.get(uid) != reason:  # once, not every tick (nor twice at start)
                _unreachable[uid] = reason
                kopf.warn(body, reason=reason, message=str(exc))
            for key, value in changed(dict(status), new).items():
                patch.status[key] = value
            return
        except QueueError as exc:
            raise kopf.TemporaryError(str(exc), delay=60) from exc
        breaker.database_up()
        _unreachable.pop(uid, None)
        if outcome.attempt_clock is not None:
            _clocks[uid] = outcome.attempt_clock
        metrics.RECONCILE_SECONDS.labels(namespace, name).observe(time.monotonic() - started)
        _ticks[uid] = time.monotonic()
    for key, value in changed(dict(status), with_generation(outcome.status, generation)).items():
        patch.status[key] = value
    for kind, reason, message in outcome.events:
        (kopf.warn if kind == "Warning" else kopf.info)(body, reason=reason, message=message)
    metrics.record(
        namespace, name, outcome.status, outcome.created, outcome.oom_killed, outcome.attempts
    )


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete_scan(
    spec: Any, namespace: str | None, name: str, uid: str, logger: kopf.Logger, **_: Any
) -> None:
    assert namespace is not None, "FaceScan is namespaced"
    scan = ScanRef(namespace, name, uid)
    api = _api()
    jobs = await api.list_jobs(namespace, scan_labels(scan))
    queue: Queue | None = None
    try:
        queue = await _queue(uid, namespace, FaceScanSpec.model_validate(dict(spec)))
    except (QueueError, SecretError, ValidationError) as exc:
        logger.warning(
            "cannot reach the database to hand images back (%s); their leases "
            "expire and are reclaimed by the next FaceScan or scan of this library",
            exc,
        )
    for job in jobs:
        job_name = job["metadata"]["name"]
        await api.delete_job(namespace, job_name)
        if queue is not None:
            await queue.release(job_name)
    await _forget(uid)
    metrics.forget(namespace, name)


@kopf.on.probe(id="reconciling")
async def reconciling(**_: Any) -> dict[str, Any]:
    """Liveness: answered by the operator's own loop, whatever any database does (a
    FaceScan's database trouble is on that FaceScan). Reports the FaceScans served and
    the seconds since the oldest of their last reconciles."""
    now = time.monotonic()
    oldest = max((now - at for at in _ticks.values()), default=0.0)
    return {"facescans": len(_ticks), "oldestReconcileAgoSeconds": round(oldest, 1)}
