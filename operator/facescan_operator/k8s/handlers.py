"""The kopf handlers of the FaceScan operator: a few lines each, all calling reconcile.

Run with `facescan operator` (or `kopf run -m facescan_operator.k8s.handlers -A`). A
timer reconciles every FaceScan level-based; create/update/resume only run it at once.
Deleting a FaceScan deletes its Jobs and hands their images back; results stay in the
database.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from facescan_operator.k8s import metrics
from facescan_operator.k8s.jobs import ScanRef, scan_labels
from facescan_operator.k8s.kube import SecretError
from facescan_operator.k8s.policy import PolicyViolation, enforce
from facescan_operator.k8s.reconcile import changed, reconcile
from facescan_operator.k8s.settings import OperatorSettings
from facescan_operator.k8s.spec import GROUP, PLURAL, VERSION, FaceScanSpec
from facescan_operator.k8s.state import ScanState, Shared, scan_state, shared
from facescan_operator.k8s.status import unreachable, with_generation
from facescan_operator.sizing import CalibrationTable
from facescan_queue.errors import DatabaseUnavailable, QueueError
from facescan_queue.repository import Queue

SETTINGS = OperatorSettings()
"""As the module is imported: kopf's timer decorator takes the interval then."""
INTERVAL_S = SETTINGS.reconcile_interval_s
CALIBRATION = CalibrationTable.load(SETTINGS.calibration)

log = logging.getLogger(__name__)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # read again at the start (the rest as set now); a wrong policy stops the operator
    started = OperatorSettings()
    memo.shared = Shared(started.policy)
    log.info("admin policy: %s", memo.shared.policy.model_dump_json(by_alias=True))
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    if started.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(started.metrics_port, addr=started.metrics_address)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await shared(memo).close()


def invalid_spec_message(exc: ValidationError) -> str:
    """One line naming each refused field by its spec path (pydantic's own text spans
    lines and links to its docs)."""
    problems = []
    for error in exc.errors():
        where = ".".join(["spec", *(str(part) for part in error["loc"])])
        problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "invalid FaceScan spec: " + "; ".join(problems)


def _report_invalid(
    state: ScanState,
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
    if state.invalid == message or (
        status.get("phase") == "Invalid" and ready.get("message") == message
    ):
        return
    state.invalid = message
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
    operator, state = shared(memo), scan_state(memo)
    try:
        parsed = enforce(operator.policy, FaceScanSpec.model_validate(dict(spec)), namespace)
    except ValidationError as exc:
        _report_invalid(state, body, dict(status), patch, invalid_spec_message(exc))
        return
    except PolicyViolation as exc:
        message = f"not allowed by the cluster's FaceScan policy: {exc}"
        _report_invalid(state, body, dict(status), patch, message, reason="PolicyViolation")
        return
    state.invalid = None
    breaker = state.breaker
    async with state.lock:
        started = time.monotonic()
        try:
            queue = await operator.queue(uid, namespace, parsed)
            outcome = await reconcile(
                scan,
                parsed,
                queue,
                operator.api(),
                breaker,
                dict(status),
                calibration=CALIBRATION,
                attempt_clock=state.clock,
                written=state.written,
            )
        except (DatabaseUnavailable, SecretError) as exc:
            # this FaceScan's own trouble, on this FaceScan: the operator serves the others
            # (and its liveness does not depend on any database); the timer tries again
            if isinstance(exc, DatabaseUnavailable):
                breaker.database_down(str(exc), time.time())
            reason = (
                "DatabaseUnavailable" if isinstance(exc, DatabaseUnavailable) else "DatabaseSecret"
            )
            operator.ticks[uid] = time.monotonic()
            new = unreachable(dict(status), reason, str(exc), datetime.now(UTC))
            new = with_generation(new, generation)
            if state.unreachable != reason:  # once, not every tick (nor twice at start)
                state.unreachable = reason
                kopf.warn(body, reason=reason, message=str(exc))
            for key, value in changed(dict(status), new).items():
                patch.status[key] = value
            return
        except QueueError as exc:
            raise kopf.TemporaryError(str(exc), delay=60) from exc
        breaker.database_up()
        state.unreachable = None
        state.written = outcome.written
        if outcome.attempt_clock is not None:
            state.clock = outcome.attempt_clock
        metrics.RECONCILE_SECONDS.labels(namespace, name).observe(time.monotonic() - started)
        operator.ticks[uid] = time.monotonic()
    for key, value in changed(dict(status), with_generation(outcome.status, generation)).items():
        patch.status[key] = value
    for kind, reason, message in outcome.events:
        (kopf.warn if kind == "Warning" else kopf.info)(body, reason=reason, message=message)
    metrics.record(
        namespace, name, outcome.status, outcome.created, outcome.oom_killed, outcome.attempts
    )


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete_scan(
    spec: Any,
    namespace: str | None,
    name: str,
    uid: str,
    logger: kopf.Logger,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    assert namespace is not None, "FaceScan is namespaced"
    scan = ScanRef(namespace, name, uid)
    operator = shared(memo)
    api = operator.api()
    jobs = await api.list_jobs(namespace, scan_labels(scan))
    queue: Queue | None = None
    try:
        queue = await operator.queue(uid, namespace, FaceScanSpec.model_validate(dict(spec)))
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
    await operator.forget(uid)
    metrics.forget(namespace, name)


@kopf.on.probe(id="reconciling")
async def reconciling(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """Liveness: answered by the operator's own loop, whatever any database does (a
    FaceScan's database trouble is on that FaceScan). Reports the FaceScans served and
    the seconds since the oldest of their last reconciles."""
    ticks = shared(memo).ticks
    now = time.monotonic()
    oldest = max((now - at for at in ticks.values()), default=0.0)
    return {"facescans": len(ticks), "oldestReconcileAgoSeconds": round(oldest, 1)}
