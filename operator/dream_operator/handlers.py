"""kopf wiring, and nothing else: watch DreamTrainJobs, their Pods (by label) and Nodes, keep
indexes of what was seen, and put the affected job keys on the controller's queue.

No handler here needs a finalizer (kopf adds one for daemons, timers and deletion handlers), so
deleting a job never waits for the operator: the API server's garbage collector removes its pods
and Service through their ownerReferences.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import api, metrics
from .controller import Controller, ControllerSettings
from .group import LABEL_JOB
from .kube import Kube, load_client
from .leader import LeaderElection

log = logging.getLogger(__name__)


@dataclass
class OperatorConfig:
    """Everything ``dream-operator run`` can set."""

    settings: ControllerSettings = field(default_factory=ControllerSettings)
    kubeconfig: str | None = None
    lease_namespace: str = "default"
    lease_name: str = "dream-operator"
    identity: str = field(default_factory=lambda: os.environ.get("POD_NAME") or socket.gethostname())
    lease_duration_seconds: int = 15
    lease_renew_seconds: float = 5.0


def _plain(body: kopf.Body) -> dict[str, Any]:
    """A detached copy of what the index needs (the live body changes under us)."""
    return {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """A registry with all handlers of one operator instance."""
    registry = kopf.OperatorRegistry()
    state: dict[str, Any] = {}
    indexes: dict[str, kopf.Index] = {}
    node_ready: dict[str, bool] = {}

    def keep(kwargs: dict[str, Any]) -> None:
        for name in ("dream_pods", "dream_nodes", "dream_jobs"):
            indexes.setdefault(name, kwargs[name])

    def controller() -> Controller | None:
        return state.get("controller")

    @kopf.index("pods", labels={LABEL_JOB: kopf.PRESENT}, id="dream_pods", registry=registry)
    async def dream_pods(namespace: str, labels: dict[str, str], body: kopf.Body, **_: Any) -> Any:
        return {(namespace, labels[LABEL_JOB]): _plain(body)}

    @kopf.index("nodes", id="dream_nodes", registry=registry)
    async def dream_nodes(name: str, body: kopf.Body, **_: Any) -> Any:
        return {name: {"metadata": {"name": name}, "status": dict(body.status)}}

    @kopf.index(api.GROUP, api.VERSION, api.PLURAL, id="dream_jobs", registry=registry)
    async def dream_jobs(namespace: str, name: str, **_: Any) -> Any:
        return {(namespace, name): True}

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        """The same credentials as the controller's client (in-cluster, else the kubeconfig)."""
        c = load_client(config.kubeconfig).configuration
        scheme, _, token = (c.api_key.get("authorization") or "").partition(" ")
        return kopf.ConnectionInfo(
            server=c.host, ca_path=c.ssl_ca_cert, insecure=not c.verify_ssl,
            scheme=scheme or None, token=token or None,
            certificate_path=c.cert_file, private_key_path=c.key_file)

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # our own Events say what happens, not kopf's logs
        settings.watching.server_timeout = 300
        kube = Kube(load_client(config.kubeconfig))
        election = LeaderElection(kube, config.lease_namespace, config.lease_name, config.identity,
                                  config.lease_duration_seconds, config.lease_renew_seconds)
        # kopf hands indexes to resource handlers only; the first event handler stores them
        # here, and kopf runs no handler before every index is fully populated.
        def index(name: str) -> Any:
            return indexes.get(name) or {}

        ctl = Controller(
            kube, config.settings,
            pods=lambda key: list(index("dream_pods").get(key, [])),
            nodes=lambda: [n for store in index("dream_nodes").values() for n in store],
            jobs=lambda: list(index("dream_jobs").keys()),
            leading=election.leading,
        )
        state.update(controller=ctl, kube=kube)

        async def lead() -> None:
            await election.run()

        async def watch_leading() -> None:
            while True:
                await election.leading.wait()
                metrics.LEADING.set(1)
                for key in list(index("dream_jobs").keys()):  # a new leader looks at everything
                    ctl.enqueue(key)
                while election.leading.is_set():
                    await asyncio.sleep(0.5)
                metrics.LEADING.set(0)

        state["tasks"] = [asyncio.create_task(c) for c in (lead(), ctl.run(), watch_leading())]

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        for task in state.get("tasks", []):
            task.cancel()
        await asyncio.gather(*state.get("tasks", []), return_exceptions=True)

    @kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, registry=registry)
    async def job_event(type: str, namespace: str, name: str, **kwargs: Any) -> None:
        keep(kwargs)
        ctl = controller()
        if ctl is None:
            return
        if type == "DELETED":
            ctl.forget((namespace, name))
        else:
            ctl.enqueue((namespace, name))

    @kopf.on.event("pods", labels={LABEL_JOB: kopf.PRESENT}, registry=registry)
    async def pod_event(namespace: str, labels: dict[str, str], **kwargs: Any) -> None:
        keep(kwargs)
        ctl = controller()
        if ctl is not None:
            ctl.enqueue((namespace, labels[LABEL_JOB]))

    @kopf.on.event("nodes", registry=registry)
    async def node_event(type: str, name: str, status: dict[str, Any], dream_pods: kopf.Index,
                   **kwargs: Any) -> None:
        keep({"dream_pods": dream_pods, **kwargs})
        ready = type != "DELETED" and any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if node_ready.get(name) == ready:
            return  # heartbeats: nothing changed for the jobs
        node_ready[name] = ready
        ctl = controller()
        if ctl is None:
            return
        for key, store in list(dream_pods.items()):
            if any((pod.get("spec") or {}).get("nodeName") == name for pod in store):
                ctl.enqueue(key)

    return registry


def kopf_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.peering.standalone = True  # one active replica is ensured by the Lease instead
    return settings


async def run_operator(config: OperatorConfig, *, namespaces: list[str] | None = None,
                       liveness_endpoint: str | None = None, stop_flag: Any = None,
                       ready_flag: Any = None) -> None:
    """Run the operator until ``stop_flag`` is set (or forever)."""
    registry = build_registry(config)
    await kopf.operator(
        registry=registry, settings=kopf_settings(), standalone=True,
        clusterwide=not namespaces, namespaces=namespaces or (),
        liveness_endpoint=liveness_endpoint, stop_flag=stop_flag, ready_flag=ready_flag,
    )

