"""Delivers settled jobs' results to their callback URLs, signed, until acknowledged or
given up.

Runs as a background task of the server (``facescan_api.process_service``) when a
callback secret is configured. Each round takes the due deliveries from the database
(held there while they are tried, so that another server, or this one after a restart,
takes them only once the hold lapses), POSTs each job's result (GET /process/{job_id}'s
body without its ``callback`` field) and records the outcome: a 2xx is the one
acknowledged delivery; anything else (a redirect too: never followed) is tried again
after a backoff (``backoff_s`` doubled after each failure, up to ``backoff_cap_s``),
until ``max_attempts`` were made or ``give_up_after_s`` passed since the job settled
(the last attempt falls at that moment). Then, or at once when the callback rules
(``facescan_api.callback_targets``) refuse the target, the delivery is given up: never
tried again, its reason kept, counted in /metrics. A server that dies after the
receiver's 2xx and before recording it delivers once more: receivers dedupe by
``X-Facescan-Job``.

Signature: ``X-Facescan-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<body>" with the secret>``; the secret is never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from prometheus_client import Counter

from facescan_api.callback_targets import CallbackRules, Target, TargetRefused, resolve
from facescan_api.jobs import Jobs
from facescan_queue.api_jobs import DueDelivery
from facescan_queue.errors import QueueError

log = logging.getLogger("facescan.api.callbacks")

SIGNATURE_HEADER = "X-Facescan-Signature"
_BATCH = 16


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, *, tolerance_s: float = 300) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` of now
    (what a receiver does; for tests and as an example)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if not parts.get("t", "").isdigit() or abs(time.time() - int(parts["t"])) > tolerance_s:
        return False
    expected = sign(secret, body, int(parts["t"])).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(frozen=True)
class DeliveryPolicy:
    """How deliveries are tried (``ServeSettings.callback_*``)."""

    timeout_s: float
    backoff_s: float
    backoff_cap_s: float
    max_attempts: int
    give_up_after_s: float
    poll_s: float

    def give_up(self, attempts: int, age_s: float) -> str | None:
        """Why no delivery follows ``attempts`` failed ones, the job settled ``age_s``
        seconds ago; None: one more is due after :meth:`delay`."""
        if attempts >= self.max_attempts:
            return f"given up after {attempts} attempts (the most allowed)"
        if age_s >= self.give_up_after_s:
            hours = self.give_up_after_s / 3600
            return f"given up after {attempts} attempts, {hours:g} h after the job settled"
        return None

    def delay(self, attempts: int, age_s: float) -> float:
        """Seconds before the next delivery: the backoff, but not past the deadline."""
        backoff = min(self.backoff_cap_s, self.backoff_s * 2 ** max(0, attempts - 1))
        return float(max(0.0, min(backoff, self.give_up_after_s - age_s)))


class DeliveryMetrics:
    """The deliverer's counters, registered in the app's registry (``collectors``)."""

    def __init__(self) -> None:
        self.deliveries = Counter(
            "facescan_api_callback_deliveries",
            "Callback deliveries tried, by outcome (acknowledged, failed, refused).",
            ["outcome"],
            registry=None,
        )
        self.given_up = Counter(
            "facescan_api_callbacks_given_up",
            "Callbacks given up (never tried again): attempts or age exhausted, or the "
            "target refused by the callback rules.",
            registry=None,
        )
        self.collectors = (self.deliveries, self.given_up)


class Deliverer:
    def __init__(
        self,
        jobs: Jobs,
        secret: bytes,
        rules: CallbackRules,
        policy: DeliveryPolicy,
        metrics: DeliveryMetrics,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.jobs = jobs
        self.tls = tls
        self._secret = secret
        self.rules = rules
        self.policy = policy
        self.metrics = metrics

    async def run(self) -> None:
        """Delivers for ever (cancel it to stop)."""
        async with httpx.AsyncClient(
            timeout=self.policy.timeout_s,
            follow_redirects=False,
            trust_env=False,
            verify=self.tls or True,
        ) as client:
            while True:
                try:
                    due = await self.jobs.store.take_due(
                        hold_s=2 * self.policy.timeout_s + 30, limit=_BATCH
                    )
                    await asyncio.gather(*(self._deliver(client, d) for d in due))
                except QueueError as exc:
                    log.warning("callbacks wait for the database: %s", exc)
                    due = []
                if len(due) < _BATCH:
                    await asyncio.sleep(self.policy.poll_s)

    async def _deliver(self, client: httpx.AsyncClient, due: DueDelivery) -> None:
        status = await self.jobs.status(due.job_id)
        if status is None:  # deleted meanwhile
            return
        try:
            error = await self._post(client, due, status.model_dump(mode="json"))
        except TargetRefused as exc:
            self.metrics.deliveries.labels("refused").inc()
            await self._give_up(due, f"given up: the target is refused: {exc}")
            return
        if error is None:
            self.metrics.deliveries.labels("acknowledged").inc()
            await self.jobs.store.acknowledged(due.job_id)
            log.info("callback of job %s acknowledged (attempt %d)", due.job_id, due.attempt)
            return
        self.metrics.deliveries.labels("failed").inc()
        settled = status.settled_at or status.created_at
        age_s = (datetime.now(UTC) - settled).total_seconds()
        reason = self.policy.give_up(due.attempt, age_s)
        if reason is not None:
            await self._give_up(due, f"{reason}; the last: {error}")
            return
        delay = self.policy.delay(due.attempt, age_s)
        await self.jobs.store.not_acknowledged(due.job_id, delay, error)
        log.warning(
            "callback of job %s not acknowledged (%s); attempt %d in %.0f s",
            due.job_id,
            error,
            due.attempt + 1,
            delay,
        )

    async def _post(
        self, client: httpx.AsyncClient, due: DueDelivery, result: dict[str, object]
    ) -> str | None:
        """One delivery: None when acknowledged, else what went wrong; TargetRefused
        when the rules refuse where it would go."""
        result.pop("callback", None)
        body = json.dumps(result, separators=(",", ":")).encode()
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                target = await resolve(due.callback_url, self.rules)
        except (OSError, TimeoutError) as exc:
            return f"cannot resolve the callback host: {type(exc).__name__}: {exc}"[:500]
        headers = {
            **target.headers,
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body, int(time.time())),
            "X-Facescan-Job": due.job_id,
            "X-Facescan-Delivery-Attempt": str(due.attempt),
        }
        try:
            response = await _post_first(client, target, body, headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
        if response.is_success:
            return None
        if response.is_redirect:
            return f"HTTP {response.status_code} (redirects are not followed)"
        return f"HTTP {response.status_code}"

    async def _give_up(self, due: DueDelivery, error: str) -> None:
        await self.jobs.store.given_up(due.job_id, error[:1000])
        self.metrics.given_up.inc()
        log.warning("callback of job %s given up: %s", due.job_id, error)


async def _post_first(
    client: httpx.AsyncClient, target: Target, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    """POST to the target's addresses in order until one connects (a host with an IPv6
    and an IPv4 address, say, where this pod reaches only one); its answer. The last
    connection error when none connects; any other error at once (the body may have
    been received)."""
    for index, url in enumerate(target.urls):
        try:
            return await client.post(
                url, content=body, headers=headers, extensions=target.extensions
            )
        except (httpx.ConnectError, httpx.ConnectTimeout):
            if index == len(target.urls) - 1:
                raise
    raise httpx.ConnectError("the callback host has no address")
