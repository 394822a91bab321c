"""What the operator keeps between ticks, in kopf's memo rather than module globals.

`Shared` lives in the operator's memo (set by the startup handler; kopf gives each
FaceScan a shallow copy of it, so every FaceScan sees the same one): the admin's policy,
the API client, the database pools by URL and when each FaceScan last reconciled (for
liveness). `ScanState` lives in each FaceScan's own memo: its circuit breaker, its lock,
where counting its attempts stands and what was already reported. A restarted operator
starts with fresh ones; everything that matters is read again from the database and the
API server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import kopf
from pydantic import SecretStr

from facescan_operator.breaker import CircuitBreaker
from facescan_operator.k8s.kube import ClusterApi, SecretError
from facescan_operator.k8s.policy import AdminPolicy
from facescan_operator.k8s.spec import FaceScanSpec
from facescan_queue.models import AttemptClock, LibraryPolicy
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings, DsnError, parse_dsn


@dataclass
class ScanState:
    """One FaceScan's state between ticks."""

    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    invalid: str | None = None
    """The invalid-spec message already reported."""
    clock: AttemptClock | None = None
    """Where counting finished attempts stands."""
    unreachable: str | None = None
    """Why its database is out of reach, as reported."""
    written: LibraryPolicy | None = None
    """The library policy last written to its database (a new one is written when the
    spec's differs, and after the operator starts)."""


@dataclass
class Shared:
    """The operator's state, shared by every FaceScan."""

    policy: AdminPolicy
    kube: ClusterApi | None = None
    queues: dict[str, Queue] = field(default_factory=dict)
    """Database pools by URL (FaceScans of one database share one)."""
    dsns: dict[str, str] = field(default_factory=dict)
    """FaceScan uid -> the URL its queue is kept under."""
    ticks: dict[str, float] = field(default_factory=dict)
    """FaceScan uid -> when its last reconcile ended (monotonic)."""

    def api(self) -> ClusterApi:
        if self.kube is None:
            self.kube = ClusterApi()
        return self.kube

    async def queue(self, uid: str, namespace: str, spec: FaceScanSpec) -> Queue:
        """The FaceScan's queue, from the URL in its Secret (SecretError naming the Secret,
        never the URL, when it cannot be read or is malformed)."""
        database = spec.database
        dsn = await self.api().read_secret(namespace, database.secret_name, database.key)
        try:
            parse_dsn(dsn)
        except DsnError as exc:  # the FaceScan's DatabaseSecret trouble; quotes none of it
            raise SecretError(
                f"Secret {namespace}/{database.secret_name} key {database.key!r}: {exc}"
            ) from None
        self.dsns[uid] = dsn
        queue = self.queues.get(dsn)
        if queue is None:
            # no migrate here: the schema is the admin's (`facescan db migrate`, the chart's
            # hook Job); a FaceScan's role need not own it, and Queue.connect says what to run
            settings = DatabaseSettings(dsn=SecretStr(dsn))
            queue = self.queues[dsn] = await Queue.connect(settings, max_size=4)
        return queue

    async def forget(self, uid: str) -> None:
        """A deleted FaceScan's entries go; its database pool is closed unless another
        FaceScan uses the same database."""
        self.ticks.pop(uid, None)
        dsn = self.dsns.pop(uid, None)
        if dsn is not None and dsn not in self.dsns.values():
            queue = self.queues.pop(dsn, None)
            if queue is not None:
                await queue.close()

    async def close(self) -> None:
        for queue in self.queues.values():
            await queue.close()
        self.queues.clear()


def scan_state(memo: kopf.Memo) -> ScanState:
    """The FaceScan's own state, made at its first tick."""
    state = memo.get("scan")
    if not isinstance(state, ScanState):
        state = memo["scan"] = ScanState()
    return state


def shared(memo: kopf.Memo) -> Shared:
    """The operator's state (the startup handler put it in the operator's memo)."""
    found = memo.get("shared")
    assert isinstance(found, Shared), "the startup handler sets memo.shared"
    return found
