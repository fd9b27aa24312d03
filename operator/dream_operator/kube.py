"""The operator's few writes to the API server, each thin and idempotent.

Built on the official ``kubernetes`` client (synchronous; calls run in worker threads). Creating
what exists (409) and deleting what is gone (404) are successes: reconciliation is level-based
and may repeat an action it cannot yet see the effect of.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from . import api

CONFLICT, NOT_FOUND, ALREADY_EXISTS = 409, 404, 409


def load_client(kubeconfig: str | None = None, pool_size: int = 32) -> kubernetes.client.ApiClient:
    """A client from the in-cluster service account, else from ``kubeconfig``/``$KUBECONFIG``."""
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig:
            raise kubernetes.config.ConfigException("kubeconfig given")
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    # Many jobs reconcile concurrently; the default pool of 4 connections would serialise them.
    configuration.connection_pool_maxsize = pool_size
    return kubernetes.client.ApiClient(configuration)


class Kube:
    """Async facade over the calls the operator makes."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.coordination = kubernetes.client.CoordinationV1Api(client)
        self.requests = 0
        # Its own threads, one per pooled connection: asyncio's default executor has only
        # cpu_count + 4 threads and is shared with kopf's synchronous handlers.
        size = client.configuration.connection_pool_maxsize
        self._pool = ThreadPoolExecutor(size, thread_name_prefix="kube")

    async def _call(self, fn: Any, *args: Any, ok: tuple[int, ...] = (), **kwargs: Any) -> Any:
        self.requests += 1
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except ApiException as error:
            if error.status in ok:
                return None
            raise

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._call(self.custom.get_namespaced_custom_object, api.GROUP, api.VERSION,
                                namespace, api.PLURAL, name, ok=(NOT_FOUND,))

    async def patch_job_status(self, job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Write ``status`` only if the job is unchanged since it was read (409 otherwise)."""
        meta = job["metadata"]
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status}
        return await self._call(self.custom.patch_namespaced_custom_object_status, api.GROUP,
                                api.VERSION, meta["namespace"], api.PLURAL, meta["name"], body)

    async def delete_job(self, namespace: str, name: str, uid: str) -> None:
        body = kubernetes.client.V1DeleteOptions(
            propagation_policy="Background", preconditions=kubernetes.client.V1Preconditions(uid=uid))
        await self._call(self.custom.delete_namespaced_custom_object, api.GROUP, api.VERSION,
                         namespace, api.PLURAL, name, body=body, ok=(NOT_FOUND, CONFLICT))

    async def create_pod(self, namespace: str, manifest: dict[str, Any]) -> None:
        await self._call(self.core.create_namespaced_pod, namespace, manifest, ok=(ALREADY_EXISTS,))

    async def create_service(self, namespace: str, manifest: dict[str, Any]) -> None:
        await self._call(self.core.create_namespaced_service, namespace, manifest, ok=(ALREADY_EXISTS,))

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int | None) -> None:
        await self._call(self.core.delete_namespaced_pod, name, namespace,
                         grace_period_seconds=grace_seconds, ok=(NOT_FOUND,))

    async def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str,
                         now: datetime, component: str) -> None:
        meta = job["metadata"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": now.isoformat().replace("+00:00", "Z"),
            "lastTimestamp": now.isoformat().replace("+00:00", "Z"),
            "count": 1,
        }
        await self._call(self.core.create_namespaced_event, meta["namespace"], event)
