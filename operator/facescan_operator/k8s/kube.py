"""The operator's calls to the API server, over the official kubernetes client.

Implements ports.KubeApi. Responses are read as plain JSON (not the client's
models), so objects with fields a given client version does not know never break the
operator. Blocking client calls run in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from facescan_operator.k8s.ports import KubeApi

log = logging.getLogger(__name__)


class SecretError(Exception):
    """The database Secret cannot be read: missing, forbidden, or without the key."""


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _json(response: Any) -> Any:
    return json.loads(response.data)


class ClusterApi(KubeApi):
    def __init__(self) -> None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        self._api = client.ApiClient()
        self._batch = client.BatchV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self._events_forbidden = False

    async def list_jobs(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        response = await asyncio.to_thread(
            self._batch.list_namespaced_job,
            namespace,
            label_selector=_selector(labels),
            _preload_content=False,
        )
        return _matching(_json(response).get("items") or [], labels)

    async def list_pods(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        response = await asyncio.to_thread(
            self._core.list_namespaced_pod,
            namespace,
            label_selector=_selector(labels),
            _preload_content=False,
        )
        return _matching(_json(response).get("items") or [], labels)

    async def create_job(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(
                self._batch.create_namespaced_job,
                namespace,
                body,  # type: ignore[arg-type]  # a plain manifest is accepted
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status != 409:  # already there: an earlier tick created it
                raise

    async def delete_job(self, namespace: str, name: str) -> None:
        try:
            await asyncio.to_thread(
                self._batch.delete_namespaced_job,
                name,
                namespace,
                propagation_policy="Background",
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def list_events(self, namespace: str, field_selector: str) -> list[dict[str, Any]]:
        """Core Events matching a field selector (``involvedObject.kind=Job,...``). Without
        RBAC 'list' on events it logs that once and returns none: only the reporting of
        Jobs whose pods are refused is lost, not the reconcile."""
        try:
            response = await asyncio.to_thread(
                self._core.list_namespaced_event,
                namespace,
                field_selector=field_selector,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status != 403:
                raise
            if not self._events_forbidden:
                self._events_forbidden = True
                log.warning(
                    "the operator may not list Events in namespace %s (RBAC: grant 'list' "
                    "on events); Jobs whose pods are never created go unreported",
                    namespace,
                )
            return []
        return list(_json(response).get("items") or [])

    async def read_secret(self, namespace: str, name: str, key: str) -> str:
        """One key of a Secret (the database URL); SecretError names what is wrong."""
        try:
            response = await asyncio.to_thread(
                self._core.read_namespaced_secret, name, namespace, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                raise SecretError(f"Secret {namespace}/{name} not found") from exc
            if exc.status == 403:
                raise SecretError(
                    f"the operator may not read Secret {namespace}/{name} (RBAC: grant "
                    f"'get' on secrets in namespace {namespace})"
                ) from exc
            raise
        secret = _json(response)
        if key in (secret.get("stringData") or {}):
            return str(secret["stringData"][key])
        data = secret.get("data") or {}
        if key not in data:
            raise SecretError(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data[key]).decode()


def _matching(items: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    # the selector went to the server; filter again in case it was not applied
    return [
        item
        for item in items
        if all(
            ((item.get("metadata") or {}).get("labels") or {}).get(k) == v
            for k, v in labels.items()
        )
    ]
