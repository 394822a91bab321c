"""Delivers settled jobs' results to their callback URLs, signed, until acknowledged.

Runs as a background task of the server (``facescan_api.run``) when a callback secret
is configured. Each round takes the due deliveries from the database (held there while
they are tried, so that another server, or this one after a restart, takes them only
once the hold lapses), POSTs each job's result (GET /process/{job_id}'s body without
its ``callback`` field) and records the outcome: a 2xx is the one acknowledged
delivery; anything else is tried again after a backoff (``callback_backoff_s`` doubled
after each failure, up to the cap), for as long as it takes. A server that dies after
the receiver's 2xx and before recording it delivers once more: receivers dedupe by
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
import time

import httpx

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


def backoff(attempt: int, base_s: float, cap_s: float) -> float:
    """Seconds before the next delivery after ``attempt`` failed ones."""
    return float(min(cap_s, base_s * 2 ** max(0, attempt - 1)))


class Deliverer:
    def __init__(
        self,
        jobs: Jobs,
        secret: bytes,
        *,
        timeout_s: float,
        backoff_s: float,
        backoff_cap_s: float,
        poll_s: float,
    ) -> None:
        self.jobs = jobs
        self._secret = secret
        self.timeout_s = timeout_s
        self.backoff_s, self.backoff_cap_s = backoff_s, backoff_cap_s
        self.poll_s = poll_s

    async def run(self) -> None:
        """Delivers for ever (cancel it to stop)."""
        async with httpx.AsyncClient(
            timeout=self.timeout_s, follow_redirects=False, trust_env=False
        ) as client:
            while True:
                try:
                    due = await self.jobs.store.take_due(hold_s=self.timeout_s + 30, limit=_BATCH)
                    await asyncio.gather(*(self._deliver(client, d) for d in due))
                except QueueError as exc:
                    log.warning("callbacks wait for the database: %s", exc)
                    due = []
                if len(due) < _BATCH:
                    await asyncio.sleep(self.poll_s)

    async def _deliver(self, client: httpx.AsyncClient, due: DueDelivery) -> None:
        status = await self.jobs.status(due.job_id)
        if status is None:  # deleted meanwhile
            return
        body = json.dumps(
            status.model_dump(mode="json", exclude={"callback"}), separators=(",", ":")
        ).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body, int(time.time())),
            "X-Facescan-Job": due.job_id,
            "X-Facescan-Delivery-Attempt": str(due.attempt),
        }
        try:
            response = await client.post(due.callback_url, content=body, headers=headers)
            error = None if response.is_success else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        if error is None:
            await self.jobs.store.acknowledged(due.job_id)
            log.info("callback of job %s acknowledged (attempt %d)", due.job_id, due.attempt)
            return
        delay = backoff(due.attempt, self.backoff_s, self.backoff_cap_s)
        await self.jobs.store.not_acknowledged(due.job_id, delay, error)
        log.warning(
            "callback of job %s not acknowledged (%s); attempt %d in %.0f s",
            due.job_id,
            error,
            due.attempt + 1,
            delay,
        )
