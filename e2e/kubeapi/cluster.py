"""A simulated control plane + kubelets on top of the store: nodes, scheduling, pod phases.

What it models is what an operator has to cope with on a real cluster:

* the scheduler binds pending pods round-robin to Ready, schedulable nodes that match the
  pod's nodeSelector, tolerate the node's taints and have room for its resource requests;
  otherwise the pod stays Pending with ``PodScheduled=False/Unschedulable``;
* a kubelet runs a bound pod (Running, podIP 127.0.0.x, Ready) and finishes a gracefully
  deleted pod shortly after - but only while its node is Ready: a pod on a dead node stays
  Terminating until someone force-deletes it (``gracePeriodSeconds=0``);
* the pod garbage collector force-deletes pods bound to nodes that no longer exist;
* containers that fail or succeed obey ``restartPolicy`` (Always/OnFailure restart in place).

``auto_run=False`` leaves every transition to the test: call :meth:`step` (one pass of
scheduler + kubelets) or the explicit helpers.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any, Self

from .errors import APIError
from .store import Store, WatchEvent, rfc3339

log = logging.getLogger(__name__)

UNREACHABLE = "node.kubernetes.io/unreachable"
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def quantity(value: Any) -> float:
    """Parse a resource quantity (``500m``, ``2Gi``, ``8``)."""
    m = _QUANTITY.match(str(value).strip())
    if not m or m[2] not in _SUFFIX:
        raise ValueError(f"bad quantity {value!r}")
    return float(m[1]) * _SUFFIX[m[2]]


def _condition(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    cond = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": rfc3339()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for t in tolerations or []:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t["key"] == taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""):
            return True
    return False


class SimCluster:
    """Nodes + scheduler + kubelets for a :class:`KubeAPI` (or a bare :class:`Store`)."""

    def __init__(self, api: Any, nodes: Iterable[str] = ("node-0",), *, auto_run: bool = True,
                 node_capacity: dict[str, str] | None = None, start_delay: float = 0.0,
                 termination_delay: float = 0.1, eviction_timeout: float | None = None, tick: float = 0.05) -> None:
        self.store: Store = api.store if hasattr(api, "store") else api
        self.node_capacity = dict(node_capacity or {"cpu": "64", "memory": "512Gi", "pods": "110"})
        self.start_delay = start_delay  # seconds a bound pod waits before Running
        self.termination_delay = termination_delay  # seconds a kubelet takes to stop a deleted pod
        self.eviction_timeout = eviction_timeout  # NotReady seconds before pods are evicted (None: never)
        self.tick = tick
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_node = 0
        self._seen: dict[str, float] = {}  # pod uid -> when the kubelet first saw it bound / terminating
        self._not_ready_since: dict[str, float] = {}
        for name in nodes:
            self.add_node(name)
        self.store.subscribe(self._on_event)
        if auto_run:
            self.start()

    # -----------------------------------------------------------------------------------------
    # lifecycle

    def start(self) -> SimCluster:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="simcluster", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.store.unsubscribe(self._on_event)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_event(self, event: WatchEvent) -> None:
        if event.key in ("pods", "nodes"):
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.tick)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.step()
            except Exception:  # keep simulating; a test will see the symptom
                log.exception("simcluster step failed")

    # -----------------------------------------------------------------------------------------
    # nodes

    def add_node(self, name: str, labels: dict[str, str] | None = None, capacity: dict[str, str] | None = None,
                 taints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        capacity = dict(capacity or self.node_capacity)
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                  "kubernetes.io/arch": "amd64", **(labels or {})}},
            "spec": {"taints": list(taints)} if taints else {},
            "status": {
                "conditions": self._node_conditions(True),
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
                "capacity": capacity,
                "allocatable": dict(capacity),
                "nodeInfo": {"kubeletVersion": "v1.32.0", "containerRuntimeVersion": "sim://1.0", "operatingSystem": "linux",
                             "architecture": "amd64", "osImage": "kubeapi-emulator", "kernelVersion": "", "machineID": uuid.uuid4().hex},
            },
        }
        node = self.store.create("nodes", node)  # nodes (unlike pods) may be created with a status
        self._wake.set()
        return node

    def delete_node(self, name: str) -> None:
        self.store.delete("nodes", None, name)
        self._wake.set()

    def set_node_ready(self, name: str, ready: bool) -> dict[str, Any]:
        """Ready=True, or Ready=Unknown/NodeStatusUnknown plus the unreachable taints (a dead node)."""
        with self._lock:
            node = self.store.get("nodes", None, name)
            taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") != UNREACHABLE]
            if not ready:
                taints += [{"key": UNREACHABLE, "effect": "NoSchedule"},
                           {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": rfc3339()}]
                self._not_ready_since[name] = time.monotonic()
            else:
                self._not_ready_since.pop(name, None)
            self.store.patch("nodes", None, name, {"spec": {"taints": taints or None}})
            updated = self.store.patch("nodes", None, name, {"status": {"conditions": self._node_conditions(ready)}},
                                       subresource="status")
            if not ready:
                # The node lifecycle controller marks the pods of an unreachable node not ready.
                for pod in self._pods_on(name):
                    if (pod.get("status") or {}).get("phase") == "Running":
                        self._set_pod_ready(pod, False, "NodeNotReady")
        self._wake.set()
        return updated

    @staticmethod
    def _node_conditions(ready: bool) -> list[dict[str, Any]]:
        if ready:
            head = _condition("Ready", "True", "KubeletReady", "kubelet is posting ready status")
            others = [_condition(k, "False", f"KubeletHas{r}", "") for k, r in
                      (("MemoryPressure", "SufficientMemory"), ("DiskPressure", "NoDiskPressure"), ("PIDPressure", "SufficientPID"))]
        else:
            head = _condition("Ready", "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")
            others = [_condition(k, "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")
                      for k in ("MemoryPressure", "DiskPressure", "PIDPressure")]
        return [head] + others

    def _ready_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.store.list("nodes") if _node_ready(n)]

    def _pods_on(self, node: str) -> list[dict[str, Any]]:
        return self.store.list("pods", field_selector=f"spec.nodeName={node}")

    # -----------------------------------------------------------------------------------------
    # one pass

    def step(self) -> None:
        """One pass of scheduler, kubelets, pod GC and (optional) taint eviction."""
        with self._lock:
            nodes = {n["metadata"]["name"]: n for n in self.store.list("nodes")}
            pods = self.store.list("pods")
            by_node: dict[str, list[dict[str, Any]]] = {name: [] for name in nodes}
            for pod in pods:
                by_node.setdefault((pod.get("spec") or {}).get("nodeName") or "", []).append(pod)
            now = time.monotonic()
            for pod in pods:
                try:
                    self._step_pod(pod, nodes, by_node, now)
                except APIError as exc:  # the pod changed or vanished under us; next pass sees it
                    log.debug("simcluster: %s", exc)
            live = {p["metadata"]["uid"] for p in pods}
            self._seen = {key: t for key, t in self._seen.items() if key.split("/")[-1] in live}

    def _step_pod(self, pod: dict[str, Any], nodes: dict[str, dict[str, Any]],
                  by_node: dict[str, list[dict[str, Any]]], now: float) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        phase = (pod.get("status") or {}).get("phase")
        node_name = spec.get("nodeName")
        uid = meta["uid"]
        if node_name and node_name not in nodes:
            self._force_delete(pod)  # PodGC: the node object is gone
            return
        node = nodes.get(node_name) if node_name else None
        if meta.get("deletionTimestamp"):
            if node is not None and _node_ready(node) and self._stop_containers(pod):
                self._force_delete(pod)
            return
        if not node_name:
            if spec.get("schedulerName", "default-scheduler") == "default-scheduler":
                self._schedule(pod, nodes, by_node)
            return
        if node is None or not _node_ready(node):
            since = self._not_ready_since.get(node_name)
            if self.eviction_timeout is not None and since is not None and now - since >= self.eviction_timeout:
                self.store.delete("pods", meta["namespace"], meta["name"])  # taint eviction: stays Terminating
            return
        if phase == "Pending" and now - self._seen.setdefault(uid, now) >= self.start_delay:
            self.start_pod(meta["namespace"], meta["name"])
        elif phase == "Running" and not _pod_ready(pod):
            self._set_pod_ready(pod, True, "")  # the node came back

    # -----------------------------------------------------------------------------------------
    # scheduler

    def _schedule(self, pod: dict[str, Any], nodes: dict[str, dict[str, Any]],
                  by_node: dict[str, list[dict[str, Any]]]) -> None:
        reasons: dict[str, int] = {}
        fits = []
        for name in sorted(nodes):
            why = self._unfit(pod, nodes[name], by_node.get(name, []))
            if why:
                reasons[why] = reasons.get(why, 0) + 1
            else:
                fits.append(name)
        meta = pod["metadata"]
        if not fits:
            detail = ", ".join(f"{count} {why}" for why, count in sorted(reasons.items()))
            message = f"0/{len(nodes)} nodes are available: {detail}." if nodes else "no nodes available to schedule pods"
            current = next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "PodScheduled"), {})
            if current.get("message") != message:
                self.store.patch("pods", meta["namespace"], meta["name"],
                                 {"status": {"conditions": [_condition("PodScheduled", "False", "Unschedulable", message)]}},
                                 subresource="status")
            return
        target = fits[self._next_node % len(fits)]
        self._next_node += 1
        # Binding goes through pods/binding semantics (once only), like the real scheduler.
        self.store.bind(meta["namespace"], meta["name"], target)
        pod["spec"]["nodeName"] = target  # later pods of this pass must see the room it takes
        by_node.setdefault(target, []).append(pod)
        self.store.patch("pods", meta["namespace"], meta["name"], {"status": {"conditions": [_condition("PodScheduled", "True")]}},
                         subresource="status")

    def _unfit(self, pod: dict[str, Any], node: dict[str, Any], on_node: list[dict[str, Any]]) -> str:
        """Why ``pod`` cannot go to ``node`` (the scheduler's per-node reason), or ""."""
        spec = pod.get("spec") or {}
        if not _node_ready(node):
            return "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"
        if (node.get("spec") or {}).get("unschedulable"):
            return "node(s) were unschedulable"
        labels = node["metadata"].get("labels") or {}
        if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
            return "node(s) didn't match Pod's node affinity/selector"
        for taint in (node.get("spec") or {}).get("taints") or []:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(spec.get("tolerations"), taint):
                return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        active = [p for p in on_node if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        if "pods" in allocatable and len(active) + 1 > quantity(allocatable["pods"]):
            return "Too many pods"
        wanted = _requests(pod)
        for resource, amount in wanted.items():
            if resource not in allocatable:
                if amount > 0 and "/" in resource:
                    return f"Insufficient {resource}"
                continue
            used = sum(_requests(p).get(resource, 0.0) for p in active)
            if used + amount > quantity(allocatable[resource]) + 1e-9:
                return f"Insufficient {resource}"
        return ""

    # -----------------------------------------------------------------------------------------
    # kubelet

    def start_pod(self, namespace: str, name: str) -> dict[str, Any]:
        """Run a bound pod: phase Running, podIP, containers running and ready.

        :meth:`_run_containers` starts the containers first; when it cannot, the pod stays as it is.
        """
        with self._lock:
            pod = self.store.get("pods", namespace, name)
            if not self._run_containers(pod):
                return self.store.get("pods", namespace, name)
            return self._mark_running(pod)

    def _run_containers(self, pod: dict[str, Any]) -> bool:
        """Hook: start the pod's containers; False leaves it Pending (and retried on later passes).
        Simulated containers need nothing."""
        return True

    def _stop_containers(self, pod: dict[str, Any]) -> bool:
        """Hook, called on every pass while a pod is being deleted on a Ready node: stop its
        containers and say whether they are gone (the pod object is then force-deleted).
        Simulated containers take ``min(grace period, termination_delay)`` seconds."""
        grace = pod["metadata"].get("deletionGracePeriodSeconds", 0)
        now = time.monotonic()
        started = self._seen.setdefault(f"terminating/{pod['metadata']['uid']}", now)
        return now - started >= min(grace, self.termination_delay)

    def _pod_ip(self, pod: dict[str, Any], host_ip: str) -> str:
        """Hook: the IP a started pod gets (the node's own for ``hostNetwork`` pods)."""
        return host_ip if pod["spec"].get("hostNetwork") else self.store.next_pod_ip()

    def _mark_running(self, pod: dict[str, Any]) -> dict[str, Any]:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        node = self.store.get("nodes", None, pod["spec"]["nodeName"])
        host_ip = node["status"]["addresses"][0]["address"]
        ip = self._pod_ip(pod, host_ip)
        now = rfc3339()
        status = {
            "phase": "Running",
            "conditions": [_condition(k, "True") for k in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": now,
            "containerStatuses": [_running(c, now) for c in pod["spec"]["containers"]],
        }
        if pod["spec"].get("initContainers"):
            status["initContainerStatuses"] = [_terminated(c, 0, "Completed", now, now) for c in pod["spec"]["initContainers"]]
        return self.store.patch("pods", namespace, name, {"status": status}, subresource="status")

    def _set_pod_ready(self, pod: dict[str, Any], ready: bool, reason: str) -> None:
        status = copy.deepcopy(pod.get("status") or {})
        for cond in status.get("conditions") or []:
            if cond["type"] in ("Ready", "ContainersReady"):
                cond.update(_condition(cond["type"], "True" if ready else "False", reason))
        for cs in status.get("containerStatuses") or []:
            cs["ready"] = ready
        self.store.patch("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], {"status": status}, subresource="status")

    def _force_delete(self, pod: dict[str, Any]) -> None:
        try:
            self.store.delete("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], grace_period_seconds=0,
                              preconditions={"uid": pod["metadata"]["uid"]})
        except APIError as exc:
            if exc.code not in (404, 409):
                raise

    def _finish(self, namespace: str, name: str, exit_code: int, reason: str, container: str | None,
                message: str = "", evicted: bool = False) -> dict[str, Any]:
        pod = self.store.get("pods", namespace, name)
        spec, status = pod["spec"], copy.deepcopy(pod.get("status") or {})
        now = rfc3339()
        names = [container] if container else [c["name"] for c in spec["containers"]]
        policy = spec.get("restartPolicy", "Always")
        restart = not evicted and (policy == "Always" or (policy == "OnFailure" and exit_code != 0))
        by_name = {c["name"]: c for c in spec["containers"]}
        statuses = {s["name"]: s for s in status.get("containerStatuses") or []}
        for cname in names:
            old = statuses.get(cname) or _running(by_name[cname], now)
            started = (old.get("state") or {}).get("running", {}).get("startedAt", now)
            ended = _terminated(by_name[cname], exit_code, reason, started, now, message)
            if restart:  # the kubelet restarts the container in place
                old.update(_running(by_name[cname], now), lastState={"terminated": ended["state"]["terminated"]},
                           restartCount=old.get("restartCount", 0) + 1)
                statuses[cname] = old
            else:
                ended["restartCount"] = old.get("restartCount", 0)
                statuses[cname] = ended
        status["containerStatuses"] = [statuses.get(c["name"]) or _running(c, now) for c in spec["containers"]]
        if not restart:
            failed = evicted or any(((s.get("state") or {}).get("terminated") or {}).get("exitCode", 0) != 0
                                    for s in status["containerStatuses"])  # any container, not just this one
            status["phase"] = "Failed" if failed else "Succeeded"
            status["conditions"] = [c if c["type"] not in ("Ready", "ContainersReady") else
                                    _condition(c["type"], "False", "PodCompleted" if status["phase"] == "Succeeded" else "PodFailed")
                                    for c in status.get("conditions") or []]
            if evicted:
                status.update(reason="Evicted", message=message)
                status["conditions"].append(_condition("DisruptionTarget", "True", "TerminationByKubelet", message))
        return self.store.patch("pods", namespace, name, {"status": status}, subresource="status")

    def fail_pod(self, namespace: str, name: str, exit_code: int = 1, reason: str = "Error",
                 container: str | None = None, message: str = "") -> dict[str, Any]:
        """Containers exit non-zero: phase Failed (or an in-place restart under Always/OnFailure)."""
        with self._lock:
            return self._finish(namespace, name, exit_code, reason, container, message)

    def succeed_pod(self, namespace: str, name: str, container: str | None = None) -> dict[str, Any]:
        """Containers exit 0: phase Succeeded (or a restart under restartPolicy Always)."""
        with self._lock:
            return self._finish(namespace, name, 0, "Completed", container)

    def evict_pod(self, namespace: str, name: str, message: str = "The node was low on resource: memory.") -> dict[str, Any]:
        """Kubelet eviction: phase Failed, status.reason Evicted, never restarted."""
        with self._lock:
            return self._finish(namespace, name, 137, "Error", None, message, evicted=True)

    def log(self, namespace: str, name: str, text: str, container: str | None = None) -> None:
        """Append container output (served by ``pods/{name}/log``)."""
        self.store.append_log(namespace, name, text, container)


def _node_ready(node: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (node.get("status") or {}).get("conditions") or [])


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def _requests(pod: dict[str, Any]) -> dict[str, float]:
    total: dict[str, float] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        for key, value in ((resources.get("limits") or {}) | (resources.get("requests") or {})).items():
            total[key] = total.get(key, 0.0) + quantity(value)
    return total


def _running(container: dict[str, Any], now: str) -> dict[str, Any]:
    return {"name": container["name"], "image": container.get("image", ""), "imageID": f"sim://{container.get('image', '')}",
            "containerID": f"sim://{uuid.uuid4().hex}", "ready": True, "started": True, "restartCount": 0,
            "state": {"running": {"startedAt": now}}, "lastState": {}}


def _terminated(container: dict[str, Any], code: int, reason: str, started: str, finished: str, message: str = "") -> dict[str, Any]:
    term = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": finished,
            "containerID": f"sim://{uuid.uuid4().hex}"}
    if message:
        term["message"] = message
    return {"name": container["name"], "image": container.get("image", ""), "imageID": f"sim://{container.get('image', '')}",
            "ready": False, "started": False, "restartCount": 0, "state": {"terminated": term}, "lastState": {}}
