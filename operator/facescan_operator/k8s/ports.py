"""The port through which the control loop reaches the API server.

reconcile.py calls it; kube.py implements it with the Kubernetes client, and the unit
tests with an in-memory cluster. Kept apart so that the adapters depend on the loop's
port, not on the loop (the import-linter layers contract in pyproject.toml).
"""

from __future__ import annotations

from typing import Any


class KubeApi:
    """What reconcile needs from the API server (kube.py implements it)."""

    async def list_jobs(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def list_pods(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def create_job(self, namespace: str, body: dict[str, Any]) -> None:
        raise NotImplementedError

    async def delete_job(self, namespace: str, name: str) -> None:
        raise NotImplementedError

    async def list_events(self, namespace: str, field_selector: str) -> list[dict[str, Any]]:
        raise NotImplementedError
