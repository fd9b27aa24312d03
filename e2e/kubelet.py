"""A kubelet that runs each pod's containers as local processes, for the end-to-end tests.

:class:`ProcessCluster` is a :class:`~e2e.kubeapi.SimCluster` (nodes, scheduler, pod GC, taint
eviction) whose kubelets really run the containers: the operator's worker pods run ``torchrun``
on this machine and train for real.

What a container gets:

* **Command.** ``command`` + ``args`` with ``$(VAR)`` expanded (``dream_operator.localpod``). The
  image is ignored - there is no image and so no entrypoint: a container without ``command``
  cannot start. Every container runs in ``workdir`` (``workingDir`` is ignored), in a process
  group of its own, with stdin from /dev/null and stdout+stderr captured.
* **Environment.** ``base_env`` (by default the few host variables a process needs to find the
  same Python: PATH, HOME, LANG, LC_ALL, TMPDIR, VIRTUAL_ENV, PYTHONPATH - nothing else of the
  host), then ``HOSTNAME`` (``spec.hostname`` or the pod name), then the container's
  ``envFrom``/``env``: Secrets and ConfigMaps are read from the store, ``fieldRef`` answers
  ``metadata.name|namespace|uid``, ``metadata.labels['k']``/``annotations['k']``,
  ``spec.nodeName``, ``spec.serviceAccountName`` and ``status.hostIP|podIP``. A missing Secret,
  ConfigMap or key leaves the pod Pending with the container waiting for
  ``CreateContainerConfigError`` (and a Warning Event), retried every ``config_retry`` seconds,
  as a real kubelet does. An executable that cannot be started fails the container with exit
  code 128, reason ``StartError``.
* **Network and DNS.** Every pod shares the host's network: ``podIP`` = ``hostIP`` =
  127.0.0.1, so two pods listening on the same port collide. There is no cluster DNS here, so
  the kubelet plays it: in env values and in argv, a Service host name
  ``<svc>.<ns>.svc`` or ``<pod hostname>.<svc>.<ns>.svc`` (also with ``.cluster.local``) is
  replaced by ``127.0.0.1`` (``a-0.a.ns.svc:29400`` -> ``127.0.0.1:29400``). Names that a
  program builds at run time are not rewritten.
* **Logs.** Each output line goes to the store's pod log (``kubectl logs``,
  ``read_namespaced_pod_log``), to ``log_dir/<ns>_<pod>.log`` and to :meth:`pod_log_lines`
  (``(time.time(), line)`` pairs, kept per pod name across pod objects of that name).
* **Termination message.** The file a kubelet mounts at ``terminationMessagePath`` is a host
  file here (``log_dir/<ns>_<pod>_<container>.termination-log``), substituted wherever the
  container's env names that path; its first 4096 bytes become ``state.terminated.message``.

What the kubelet does with them:

* **Exit.** When a container's main process exits, the rest of its process group is killed
  (a container's processes die with its PID 1) and the exit is reported: Succeeded (0,
  ``Completed``) or Failed (the exit code, 128+signal when killed by a signal, ``Error``).
  Several containers: the pod's phase waits for the last one, Failed if any failed.
  ``restartPolicy`` OnFailure/Always restart the container in place after a back-off
  (``restart_backoff`` doubling to ``restart_backoff_max``; the status says running meanwhile,
  not ``CrashLoopBackOff``).
* **Graceful deletion** (on a Ready node): SIGTERM to the process group, SIGKILL when
  ``deletionGracePeriodSeconds`` run out, and the pod object is force-deleted only once the
  processes are gone. ``preStop`` hooks are not run.
* **Orphans.** Processes of a pod object that is gone (force-deleted, or garbage-collected with
  its node) are killed.
* **Dead and cut-off nodes.** While a node is NotReady its kubelet reports nothing: exits are
  kept and reported if the node comes back. :meth:`kill_node` makes a node NotReady and kills its
  pods' processes (the pods stay as they are until someone force-deletes them);
  :meth:`set_node_ready` alone is a partition (the processes go on). :meth:`kill_pod` is a crash.

Not emulated: images, volumes, resource limits (nothing is OOM-killed), probes, lifecycle hooks,
init containers (reported as completed, never run), ``workingDir``, per-pod network namespaces.
"""

from __future__ import annotations

import base64
import copy
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dream_operator import proctree
from dream_operator.localpod import ContainerConfigError, container_argv, container_env

from .kubeapi.cluster import SimCluster, _condition, _node_ready, _terminated
from .kubeapi.errors import APIError
from .kubeapi.store import rfc3339

log = logging.getLogger(__name__)

DEFAULT_TERMINATION_PATH = "/dev/termination-log"

BASE_ENV_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
"""The host variables a container gets by default: enough to find the same Python."""

POD_IP = "127.0.0.1"

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_SERVICE_HOST = re.compile(rf"(?<![-a-z0-9.])(?:{_LABEL}\.){{2,3}}svc(?:\.cluster\.local)?\.?(?![-a-z0-9.])",
                           re.IGNORECASE)


def default_base_env() -> dict[str, str]:
    """The variables of ``os.environ`` named in :data:`BASE_ENV_VARIABLES` that are set."""
    return {k: os.environ[k] for k in BASE_ENV_VARIABLES if k in os.environ}


def resolve_service_hosts(text: str) -> str:
    """The kubelet's stand-in for cluster DNS: ``<x>.<svc>.<ns>.svc[.cluster.local]`` and
    ``<svc>.<ns>.svc[.cluster.local]`` become ``127.0.0.1`` (every pod is on the host network)."""
    return _SERVICE_HOST.sub(POD_IP, text)


def _group_members(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` that are not zombies (from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                fields = file.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


@dataclass(eq=False)
class _Process:
    """One container's main process (the leader of its own process group)."""

    namespace: str
    pod: str
    uid: str
    container: str
    node: str
    proc: subprocess.Popen[bytes]
    tag: str
    """Its :data:`~dream_operator.proctree.CONTAINER_TAG`: finds all of its processes."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)
    exiting: bool = False  # the leader exited and the group got SIGKILL: nothing more to signal
    reaped: bool = False  # the leader was waited for: its pid (= the group id) may be reused
    exit_code: int | None = None
    done: threading.Event = field(default_factory=threading.Event)  # exited, group killed, output read
    reported: bool = False  # the exit needs no (more) reporting
    term_deadline: float | None = None  # deletion: SIGTERM sent, SIGKILL at this monotonic time
    killed: bool = False

    def signal(self, sig: int) -> bool:
        """Signal the process group (never after the leader was reaped); SIGKILL reaches every
        process of the container, also those in sessions of their own (torchrun's workers)."""
        with self.lock:
            if self.exiting or self.reaped:
                return False
            if sig == signal.SIGKILL:
                proctree.kill_tagged(self.tag)
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return False
            return True


class ProcessCluster(SimCluster):
    """A :class:`SimCluster` whose kubelets run containers as local processes (see the module)."""

    config_retry = 1.0  # seconds between attempts to start a pod whose config is broken
    restart_backoff = 0.5  # first in-place restart delay (restartPolicy Always/OnFailure)
    restart_backoff_max = 10.0

    def __init__(self, api: Any, nodes: Iterable[str] = ("node-0",), *, workdir: str | Path, log_dir: str | Path,
                 base_env: Mapping[str, str] | None = None, **simcluster_kwargs: Any) -> None:
        self.workdir = str(workdir)
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.base_env = dict(default_base_env() if base_env is None else base_env)
        self._procs: dict[str, dict[str, _Process]] = {}  # pod uid -> container name -> its latest process
        self._not_before: dict[str, float] = {}  # pod uid -> earliest next start attempt
        self._respawn: dict[tuple[str, str, str, str], float] = {}  # (ns, pod, uid, container) -> when
        self._started = 0  # containers started: makes each one's tag unique
        self._log_lock = threading.Lock()
        self._lines: dict[tuple[str, str], list[tuple[float, str]]] = {}
        super().__init__(api, nodes, **simcluster_kwargs)

    # -----------------------------------------------------------------------------------------
    # public helpers

    def pod_log_lines(self, namespace: str, name: str) -> list[tuple[float, str]]:
        """``(time.time(), line)`` for every output line of pods named ``name`` so far."""
        with self._log_lock:
            return list(self._lines.get((namespace, name), []))

    def kill_pod(self, namespace: str, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the pod's process groups (SIGKILL: a crash or OOM kill, reported as 128+9)."""
        with self._lock:
            uid = self.store.get("pods", namespace, name)["metadata"]["uid"]
            running = [r for r in self._procs.get(uid, {}).values() if not r.done.is_set()]
            if not running:
                raise LookupError(f"pod {namespace}/{name} has no running container")
            for rec in running:
                rec.signal(sig)

    def kill_node(self, name: str) -> None:
        """The node dies: NotReady, and its pods' processes are SIGKILLed with nobody to report it."""
        with self._lock:
            self.set_node_ready(name, False)
            for recs in self._procs.values():
                for rec in recs.values():
                    if rec.node == name and not rec.done.is_set():
                        rec.signal(signal.SIGKILL)

    def stop(self) -> None:
        """Stop simulating, kill every process group started and wait for them."""
        super().stop()
        with self._lock:
            records = [rec for recs in self._procs.values() for rec in recs.values()]
        for rec in records:
            rec.reported = True  # nobody is left to report
            rec.signal(signal.SIGKILL)
        for rec in records:
            for thread in rec.threads:
                thread.join(10)

    # -----------------------------------------------------------------------------------------
    # SimCluster hooks

    def step(self) -> None:
        with self._lock:
            self._reconcile_processes()
            super().step()

    def _pod_ip(self, pod: dict[str, Any], host_ip: str) -> str:
        return POD_IP

    def _run_containers(self, pod: dict[str, Any]) -> bool:
        meta = pod["metadata"]
        uid = meta["uid"]
        if any(not r.done.is_set() for r in self._procs.get(uid, {}).values()):
            return True  # already started (a status write failed after it)
        now = time.monotonic()
        if now < self._not_before.get(uid, 0.0):
            return False
        try:
            plans = [(c["name"], *self._prepare(pod, c)) for c in pod["spec"]["containers"]]
        except ContainerConfigError as exc:
            self._not_before[uid] = now + self.config_retry
            self._config_error(pod, str(exc))
            return False
        started: list[_Process] = []
        try:
            for cname, env, argv in plans:
                started.append(self._spawn(pod, cname, env, argv))
        except OSError as exc:
            for rec in started:
                rec.reported = True
                rec.signal(signal.SIGKILL)
            self._not_before[uid] = now + self.config_retry
            log.warning("kubelet: pod %s/%s cannot start: %s", meta["namespace"], meta["name"], exc)
            self._finish(meta["namespace"], meta["name"], 128, "StartError", None,
                         f"failed to start container process: {exc}")
            return False
        self._not_before.pop(uid, None)
        return True

    def _stop_containers(self, pod: dict[str, Any]) -> bool:
        meta = pod["metadata"]
        running = [r for r in self._procs.get(meta["uid"], {}).values() if not r.done.is_set()]
        for key in [k for k in self._respawn if k[2] == meta["uid"]]:
            del self._respawn[key]
        if not running:
            return True
        grace = meta.get("deletionGracePeriodSeconds") or 0
        now = time.monotonic()
        for rec in running:
            if rec.term_deadline is None:
                rec.term_deadline = now + grace
                rec.signal(signal.SIGTERM if grace > 0 else signal.SIGKILL)
            elif now >= rec.term_deadline and not rec.killed:
                log.info("kubelet: %s/%s did not stop in %ss, killing it", rec.namespace, rec.pod, grace)
                rec.killed = True
                rec.signal(signal.SIGKILL)
        return False

    # -----------------------------------------------------------------------------------------
    # containers

    def _prepare(self, pod: dict[str, Any], container: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
        """The environment and argv of one container (ContainerConfigError if it cannot start)."""
        meta, spec = pod["metadata"], pod["spec"]
        namespace = meta["namespace"]
        fields = {
            "metadata.name": meta["name"], "metadata.namespace": namespace, "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""), "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.hostIP": POD_IP, "status.podIP": POD_IP, "status.hostIPs": POD_IP, "status.podIPs": POD_IP,
        }
        for kind in ("labels", "annotations"):
            for key, value in (meta.get(kind) or {}).items():
                fields[f"metadata.{kind}['{key}']"] = value

        def lookup(resource: str) -> Any:
            def data(name: str) -> dict[str, str]:
                obj = self.store.try_get(resource, namespace, name)
                if obj is None:
                    raise KeyError(name)
                if resource == "secrets":
                    out = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()}
                else:
                    out = {k: str(v) for k, v in (obj.get("data") or {}).items()}
                    out.update({k: base64.b64decode(v).decode("utf-8", "replace")
                                for k, v in (obj.get("binaryData") or {}).items()})
                out.update(obj.get("stringData") or {})
                return out
            return data

        own = container_env(container, secrets=lookup("secrets"), config_maps=lookup("configmaps"), fields=fields)
        own = {k: resolve_service_hosts(v) for k, v in own.items()}
        # A kubelet mounts a file at terminationMessagePath; here a host file stands in for it
        # wherever the container's environment names that path.
        mounted = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        host_file = self._termination_file(namespace, meta["name"], container["name"])
        host_file.unlink(missing_ok=True)  # an earlier pod of the same name may have left one
        own = {k: str(host_file) if v == mounted else v for k, v in own.items()}
        argv = [resolve_service_hosts(a) for a in container_argv(container, own)]
        env = {**self.base_env, "HOSTNAME": spec.get("hostname") or meta["name"], **own}
        return env, argv

    def _spawn(self, pod: dict[str, Any], cname: str, env: dict[str, str], argv: list[str]) -> _Process:
        meta = pod["metadata"]
        self._started += 1
        tag = f"{meta['uid']}/{cname}/{self._started}"
        proc = subprocess.Popen(argv, env={**env, proctree.CONTAINER_TAG: tag}, cwd=self.workdir,
                                start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        rec = _Process(meta["namespace"], meta["name"], meta["uid"], cname, pod["spec"]["nodeName"], proc, tag)
        log.info("kubelet %s: started %s/%s[%s] pid %d: %s", rec.node, rec.namespace, rec.pod, cname, proc.pid, argv)
        self._procs.setdefault(rec.uid, {})[cname] = rec
        reader = threading.Thread(target=self._read, args=(rec,), name=f"kubelet-log-{rec.pod}", daemon=True)
        waiter = threading.Thread(target=self._wait, args=(rec, reader), name=f"kubelet-wait-{rec.pod}", daemon=True)
        rec.threads = [reader, waiter]
        reader.start()
        waiter.start()
        return rec

    def _read(self, rec: _Process) -> None:
        key = (rec.namespace, rec.pod)
        stdout = rec.proc.stdout
        assert stdout is not None
        with stdout, open(self.log_dir / f"{rec.namespace}_{rec.pod}.log", "a", encoding="utf-8") as file:
            for raw in iter(stdout.readline, b""):
                text = raw.decode("utf-8", "replace")
                if not text.endswith("\n"):
                    text += "\n"
                with self._log_lock:
                    self._lines.setdefault(key, []).append((time.time(), text[:-1]))
                file.write(text)
                file.flush()
                try:
                    self.store.append_log(rec.namespace, rec.pod, text, rec.container)
                except APIError:
                    pass  # the pod object is gone; the file and pod_log_lines still have it

    def _wait(self, rec: _Process, reader: threading.Thread) -> None:
        pid = rec.proc.pid
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited but not reaped: the group id stays ours
        except ChildProcessError:
            pass
        with rec.lock:
            try:
                os.killpg(pid, signal.SIGKILL)  # the container's other processes die with its main one
            except (ProcessLookupError, PermissionError):
                pass
            proctree.kill_tagged(rec.tag)  # also those that left the group (torchrun's workers)
            rec.exiting = True
        # SIGKILL is not instant, and "gone" must mean gone (ports, files, GPUs freed). The unreaped
        # leader keeps the group id from being reused meanwhile.
        deadline = time.monotonic() + 10
        while (left := sorted(set(_group_members(pid)) | set(proctree.tagged(rec.tag)))) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        if left:
            log.warning("kubelet: processes %s of %s/%s outlived SIGKILL", left, rec.namespace, rec.pod)
        with rec.lock:
            code = rec.proc.wait()
            rec.reaped = True
        reader.join(5)  # children that escaped the group may hold the pipe open; do not wait for them
        rec.exit_code = 128 - code if code < 0 else code
        log.info("kubelet %s: %s/%s[%s] exited with %d", rec.node, rec.namespace, rec.pod, rec.container, rec.exit_code)
        try:
            with self._lock:
                self._report(rec)
        except Exception:  # a test will see the symptom
            log.exception("kubelet: reporting the exit of %s/%s failed", rec.namespace, rec.pod)
        finally:
            rec.done.set()
            self._wake.set()

    # -----------------------------------------------------------------------------------------
    # status (callers hold self._lock)

    def _termination_file(self, namespace: str, pod: str, container: str) -> Path:
        return self.log_dir / f"{namespace}_{pod}_{container}.termination-log"

    def _termination_message(self, rec: _Process) -> str:
        """What the container wrote to its terminationMessagePath (at most 4096 bytes, as a
        kubelet keeps)."""
        try:
            with self._termination_file(rec.namespace, rec.pod, rec.container).open("rb") as file:
                return file.read(4096).decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _report(self, rec: _Process) -> None:
        """Report an exited container, unless nobody can or should (deferred while NotReady)."""
        if rec.reported or rec.exit_code is None:
            return
        pod = self.store.try_get("pods", rec.namespace, rec.pod)
        if pod is None or pod["metadata"]["uid"] != rec.uid or pod["metadata"].get("deletionTimestamp"):
            rec.reported = True  # gone or going: the deletion path only waits for the processes
            return
        node = self.store.try_get("nodes", None, rec.node)
        if node is None or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            rec.reported = True
            return
        if not _node_ready(node):
            return  # a dead or cut-off kubelet reports nothing; retried when the node is Ready again
        code = rec.exit_code
        reason = "Completed" if code == 0 else "Error"
        policy = pod["spec"].get("restartPolicy", "Always")
        siblings = [r for name, r in self._procs.get(rec.uid, {}).items() if name != rec.container and not r.reported]
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            updated = self._finish(rec.namespace, rec.pod, code, reason, rec.container)
            restarts = next((s.get("restartCount", 1) for s in updated["status"].get("containerStatuses") or []
                             if s["name"] == rec.container), 1)
            delay = min(self.restart_backoff_max, self.restart_backoff * 2 ** max(restarts - 1, 0))
            self._respawn[(rec.namespace, rec.pod, rec.uid, rec.container)] = time.monotonic() + delay
        elif siblings:
            self._container_exited(pod, rec.container, code, reason)  # the phase waits for the others
        else:
            self._finish(rec.namespace, rec.pod, code, reason, rec.container,
                         message=self._termination_message(rec))
        rec.reported = True  # not before: a failed write is retried on the next pass

    def _container_exited(self, pod: dict[str, Any], cname: str, code: int, reason: str) -> None:
        status, now = copy.deepcopy(pod.get("status") or {}), rfc3339()
        spec = {c["name"]: c for c in pod["spec"]["containers"]}
        statuses = []
        for cs in status.get("containerStatuses") or []:
            if cs["name"] == cname:
                started = ((cs.get("state") or {}).get("running") or {}).get("startedAt", now)
                cs = {**_terminated(spec[cname], code, reason, started, now), "restartCount": cs.get("restartCount", 0)}
            statuses.append(cs)
        conditions = [c if c["type"] not in ("Ready", "ContainersReady") else
                      _condition(c["type"], "False", "ContainersNotReady", f"containers with unready status: [{cname}]")
                      for c in status.get("conditions") or []]
        meta = pod["metadata"]
        self.store.patch("pods", meta["namespace"], meta["name"],
                         {"status": {"containerStatuses": statuses, "conditions": conditions}}, subresource="status")

    def _config_error(self, pod: dict[str, Any], message: str) -> None:
        """Pending, containers waiting with CreateContainerConfigError (written once per message)."""
        meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
        if any(((cs.get("state") or {}).get("waiting") or {}).get("message") == message
               for cs in status.get("containerStatuses") or []):
            return
        names = " ".join(c["name"] for c in spec["containers"])
        waiting = [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "started": False,
                    "restartCount": 0, "lastState": {},
                    "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}}}
                   for c in spec["containers"]]
        conditions = [_condition("PodReadyToStartContainers", "True"), _condition("Initialized", "True"),
                      _condition("Ready", "False", "ContainersNotReady", f"containers with unready status: [{names}]"),
                      _condition("ContainersReady", "False", "ContainersNotReady", f"containers with unready status: [{names}]"),
                      _condition("PodScheduled", "True")]
        now = rfc3339()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": meta["namespace"], "name": meta["name"],
                               "uid": meta["uid"], "fieldPath": f"spec.containers{{{spec['containers'][0]['name']}}}"},
            "reason": "Failed", "message": f"Error: {message}", "type": "Warning", "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "kubelet", "host": spec.get("nodeName", "")},
            "reportingComponent": "kubelet", "reportingInstance": spec.get("nodeName", ""),
        }
        try:
            self.store.create("events", event, meta["namespace"])
        except APIError as exc:
            log.debug("kubelet: event not recorded: %s", exc)
        self.store.patch("pods", meta["namespace"], meta["name"], {"status": {
            "phase": "Pending", "hostIP": POD_IP, "hostIPs": [{"ip": POD_IP}], "podIP": POD_IP, "podIPs": [{"ip": POD_IP}],
            "startTime": status.get("startTime") or rfc3339(), "conditions": conditions, "containerStatuses": waiting,
        }}, subresource="status")

    def _reconcile_processes(self) -> None:
        """Kill orphans, report exits deferred while a node was NotReady, restart containers."""
        pods = {p["metadata"]["uid"]: p for p in self.store.list("pods")}
        for uid, recs in list(self._procs.items()):
            if uid in pods:
                for rec in recs.values():
                    if rec.exit_code is not None and not rec.reported:
                        try:
                            self._report(rec)
                        except APIError as exc:  # the pod changed under us; the next pass retries
                            log.debug("kubelet: %s", exc)
                continue
            for rec in recs.values():  # the pod object is gone: nobody wants these any more
                rec.reported = True
                if not rec.done.is_set() and not rec.killed:
                    log.info("kubelet %s: killing orphaned %s/%s[%s]", rec.node, rec.namespace, rec.pod, rec.container)
                    rec.killed = True
                    rec.signal(signal.SIGKILL)
            if all(rec.done.is_set() for rec in recs.values()):
                del self._procs[uid]
                self._not_before.pop(uid, None)
        now = time.monotonic()
        for key, due in list(self._respawn.items()):
            namespace, name, uid, cname = key
            pod = pods.get(uid)
            if pod is None or pod["metadata"].get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != "Running":
                del self._respawn[key]
                continue
            node = self.store.try_get("nodes", None, pod["spec"].get("nodeName", ""))
            if due > now or node is None or not _node_ready(node):
                continue
            del self._respawn[key]
            container = next(c for c in pod["spec"]["containers"] if c["name"] == cname)
            try:
                self._spawn(pod, cname, *self._prepare(pod, container))
            except (ContainerConfigError, OSError) as exc:
                log.warning("kubelet: cannot restart %s/%s[%s]: %s", namespace, name, cname, exc)
                self._respawn[key] = now + self.restart_backoff_max
