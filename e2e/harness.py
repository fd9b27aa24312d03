"""The end-to-end environment: a cluster, object storage and the operator, driven with kubectl.

:class:`LocalEnvironment` builds the whole system on this machine: the Kubernetes API emulator
(:mod:`e2e.kubeapi`), three process-based kubelets (:mod:`e2e.kubelet`) that run each pod's
``torchrun`` as local processes, SeaweedFS as S3, and the real operator as a ``dream-operator run``
process. :class:`RealEnvironment` points the same tests at a real cluster (``DREAM_E2E_REAL=1``
and ``KUBECONFIG``), where the operator was installed with the Helm chart and the runtime image
built from ``images/``. The tests only see :class:`Environment`'s methods.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "examples" / "jobs"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Environment(ABC):
    """What a test can do: kubectl, and the faults it injects."""

    kubeconfig: Path
    namespace: str = "default"
    checkpoint_bucket: str = "dream-checkpoints"

    # ------------------------------------------------------------------ kubectl
    def kubectl(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        result = subprocess.run([KUBECTL, f"--kubeconfig={self.kubeconfig}", "-n",
                                 self.namespace, *args], capture_output=True, text=True,
                                check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stderr.strip()}")
        return result.stdout

    def job(self, name: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", "dreamtrainjob", name, "-o", "json"))

    def status(self, name: str) -> dict[str, Any]:
        return self.job(name).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = 300) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            if status.get("phase") == "Failed" and phase != "Failed":
                raise AssertionError(f"job {name} failed: {status.get('message')}")
            return status if status.get("phase") == phase else None

        return wait_for(reached, timeout, f"job {name} to be {phase}", interval=0.5)

    def wait_step(self, name: str, step: int, generation: int = 0, timeout: float = 300) -> int:
        """Wait until group ``generation`` of the job reports at least ``step``; return it."""
        def reached() -> int | None:
            status = self.status(name)
            seen = (status.get("progress") or {}).get("step") or 0
            if status.get("groupGeneration", 0) == generation and seen >= step:
                return seen
            return None

        return wait_for(reached, timeout, f"job {name} to reach step {step}", interval=0.1)

    def pods(self, name: str) -> list[dict[str, Any]]:
        out = self.kubectl("get", "pods", "-l", f"dreamtrainer.dev/job-name={name}", "-o", "json")
        return json.loads(out)["items"]

    def logs(self, pod: str) -> str:
        return self.kubectl("logs", pod)

    def apply(self, manifest: Path) -> str:
        return self.kubectl("apply", "-f", str(manifest))

    def delete_job(self, name: str) -> None:
        self.kubectl("delete", "dreamtrainjob", name, "--ignore-not-found", "--wait=false")

        def gone() -> bool:
            out = self.kubectl("get", "pods", "-l", f"dreamtrainer.dev/job-name={name}", "-o",
                               "name", check=False)
            return not out.strip() and not self.kubectl(
                "get", "dreamtrainjob", name, "--ignore-not-found", "-o", "name").strip()

        wait_for(gone, 120, f"job {name} and its pods to be deleted", interval=0.5)

    def reset_checkpoints(self, uri: str) -> None:
        """Remove the checkpoints a previous test left under ``uri``."""
        import s3fs

        fs = s3fs.S3FileSystem(**self.s3_options())
        path = uri.removeprefix("s3://")
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def s3_options(self) -> dict[str, Any]:
        """s3fs options reaching the job's checkpoint store (default: this shell's AWS_*)."""
        return {}

    # ------------------------------------------------------------------ faults
    @abstractmethod
    def kill_pod_processes(self, pod: str) -> None:
        """The pod's container dies at once (a crash, an OOM kill): exit 137."""

    @abstractmethod
    def kill_node_of(self, pod: str) -> str:
        """The node under ``pod`` dies: NotReady, everything on it gone without a word."""

    @abstractmethod
    def operator_down(self) -> AbstractContextManager[None]:
        """The operator is killed (SIGKILL) for the block's duration, then started again."""

    def evict(self, pod: str) -> None:
        """Graceful deletion, as eviction or a drain does it: SIGTERM, then the grace period."""
        self.kubectl("delete", "pod", pod, "--wait=false")

    @abstractmethod
    def log_lines(self, pod: str) -> list[tuple[float, str]]:
        """(arrival time, line) of the pod's output, for timing a restart."""


@dataclass
class LocalEnvironment(Environment):
    """Everything on this machine (see the module docstring)."""

    workdir: Path = field(default_factory=Path)
    nodes: tuple[str, ...] = ("node-0", "node-1", "node-2")
    cluster: Any = None
    """The :class:`e2e.kubelet.ProcessCluster`."""
    operator_args: list[str] = field(default_factory=list)
    _stack: ExitStack = field(default_factory=ExitStack)
    _operator: subprocess.Popen | None = None
    _s3_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    @contextmanager
    def create(cls, workdir: Path) -> Iterator[LocalEnvironment]:
        from e2e.kubeapi import KubeAPI
        from e2e.kubelet import ProcessCluster, default_base_env
        from tests.s3_server import seaweedfs

        workdir.mkdir(parents=True, exist_ok=True)
        with ExitStack() as stack:
            api = stack.enter_context(KubeAPI())
            kubeconfig = api.write_kubeconfig(workdir / "kubeconfig")
            env = cls(kubeconfig=kubeconfig, workdir=workdir, _stack=stack)
            env._s3_env = stack.enter_context(seaweedfs(_mkdir(workdir / "seaweedfs")))
            # The checkout is the image (its /workspace); the image's environment points the
            # trainer's local logs out of it.
            image_env = {**default_base_env(), "DREAM_LOG_DIR": str(_mkdir(workdir / "trainer"))}
            env.cluster = stack.enter_context(ProcessCluster(
                api, nodes=env.nodes, workdir=str(ROOT), log_dir=_mkdir(workdir / "pods"),
                base_env=image_env))
            env.kubectl("apply", "-f", str(ROOT / "crds"))
            env._install_credentials()
            env.operator_args = [
                sys.executable, "-m", "dream_operator.cli", "run", f"--kubeconfig={kubeconfig}",
                "--metrics-port=0", f"--health-port={free_port()}",
                f"--progress-port={free_port()}", f"--rendezvous-port={free_port()}",
                "--progress-interval-seconds=0.2", "--resync-seconds=2",
                "--node-lost-after-seconds=1", "--force-delete-after-seconds=1",
                "--lease-duration-seconds=3", "--log-level=INFO"]
            env._start_operator()
            stack.callback(env._stop_operator)
            yield env

    def _install_credentials(self) -> None:
        """The S3 Secret the example jobs reference, created as a user would."""
        import s3fs

        literals = [f"--from-literal={k}={v}" for k, v in self._s3_env.items()]
        self.kubectl("create", "secret", "generic", "s3-credentials", *literals)
        s3fs.S3FileSystem(**self.s3_options()).mkdir(self.checkpoint_bucket)

    def s3_options(self) -> dict[str, Any]:
        return {"key": self._s3_env["AWS_ACCESS_KEY_ID"],
                "secret": self._s3_env["AWS_SECRET_ACCESS_KEY"],
                "endpoint_url": self._s3_env["AWS_ENDPOINT_URL"]}

    def _start_operator(self) -> None:
        log = (self.workdir / "operator.log").open("ab")
        self._operator = subprocess.Popen(self.operator_args, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=self.workdir)
        log.close()

    def _stop_operator(self, sig: int = signal.SIGTERM) -> None:
        if self._operator is not None and self._operator.poll() is None:
            self._operator.send_signal(sig)
            try:
                self._operator.wait(30)
            except subprocess.TimeoutExpired:
                self._operator.kill()
                self._operator.wait()
        self._operator = None

    def kill_pod_processes(self, pod: str) -> None:
        self.cluster.kill_pod(self.namespace, pod)

    def kill_node_of(self, pod: str) -> str:
        node = json.loads(self.kubectl("get", "pod", pod, "-o", "json"))["spec"]["nodeName"]
        self.cluster.kill_node(node)
        return node

    def revive_nodes(self) -> None:
        for name in self.nodes:
            self.cluster.set_node_ready(name, True)

    @contextmanager
    def operator_down(self) -> Iterator[None]:
        self._stop_operator(signal.SIGKILL)
        try:
            yield
        finally:
            self._start_operator()

    def log_lines(self, pod: str) -> list[tuple[float, str]]:
        return self.cluster.pod_log_lines(self.namespace, pod)


@dataclass
class RealEnvironment(Environment):
    """A real cluster: ``KUBECONFIG`` names it; the operator was installed with the chart, the
    ``s3-credentials`` Secret and the bucket exist, and ``spec.image`` of the example jobs can be
    pulled. Faults go through kubectl; a node cannot be killed from here (those tests skip)."""

    @classmethod
    @contextmanager
    def create(cls) -> Iterator[RealEnvironment]:
        yield cls(kubeconfig=Path(os.environ["KUBECONFIG"]),
                  namespace=os.environ.get("DREAM_E2E_NAMESPACE", "default"))

    def kill_pod_processes(self, pod: str) -> None:
        # The trainer processes, not PID 1 (torchrun): a kill from inside cannot stop PID 1.
        self.kubectl("exec", pod, "-c", "trainer", "--", "pkill", "-9", "-f", "python",
                     check=False)

    def kill_node_of(self, pod: str) -> str:
        import pytest

        pytest.skip("killing a node of a real cluster is not done from a test")

    @contextmanager
    def operator_down(self) -> Iterator[None]:
        namespace = os.environ.get("DREAM_E2E_OPERATOR_NAMESPACE", "dream-system")
        selector = "app.kubernetes.io/name=dream-trainer-operator"
        subprocess.run([KUBECTL, "-n", namespace, "scale", "deployment", "-l", selector,
                        "--replicas=0"], check=True)
        try:
            yield
        finally:
            subprocess.run([KUBECTL, "-n", namespace, "scale", "deployment", "-l", selector,
                            "--replicas=1"], check=True)

    def log_lines(self, pod: str) -> list[tuple[float, str]]:
        lines = []
        for line in self.kubectl("logs", pod, "--timestamps").splitlines():
            stamp, _, text = line.partition(" ")
            seconds = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
            lines.append((seconds - time.timezone, text))
        return lines


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------- job logs
SUMMARY = re.compile(r"^summary (\{.*\})$", re.MULTILINE)
STEP = re.compile(r"^step (\d+)/")
RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")


def final_summary(logs: str) -> dict[str, float]:
    """The example trainer's last line: ``summary {"steps": ..., "loss": ...}``."""
    found = SUMMARY.findall(logs)
    if not found:
        raise AssertionError(f"no summary line in the logs:\n{logs[-3000:]}")
    return json.loads(found[-1])


def first_step_after(lines: list[tuple[float, str]], since: float) -> tuple[float, int]:
    """(time, step) of the first ``step N/M`` line printed after ``since``."""
    for when, text in lines:
        match = STEP.match(text)
        if when >= since and match:
            return when, int(match[1])
    raise AssertionError("no training step was printed after the fault")


def manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((JOBS / name).read_text())


# ---------------------------------------------------------------------------------- scenarios
JOB = "llama-s3"
JOB_MANIFEST = JOBS / "llama-s3.yaml"
FAULT_AFTER_STEP = 30
"""Faults strike once rank 0 reported this step: past the first checkpoint (every 20 steps)."""


@dataclass(frozen=True)
class Recovery:
    """What one fault cost: measured from the pods' own output."""

    fault: str
    last_step_before: int
    """The last step rank 0 printed before the fault."""
    resumed_step: int
    """The step the restarted group resumed from (its checkpoint)."""
    seconds_to_first_step: float
    """From the fault to the first training step the restarted group printed."""
    restarts: int
    final_loss: float

    @property
    def steps_lost(self) -> int:
        return max(self.last_step_before - self.resumed_step, 0)


def start_job(env: Environment) -> float:
    """Apply the example job afresh (no earlier job, no checkpoints); returns when. Pods of
    earlier runs had the same names: only their output after this time is this run's."""
    env.delete_job(JOB)
    env.reset_checkpoints(manifest(JOB_MANIFEST.name)["spec"]["checkpoint"]["uri"])
    started = time.time()
    env.apply(JOB_MANIFEST)
    return started


def rank0_pod(env: Environment, generation: int, since: float = 0.0) -> str:
    """The pod of group ``generation`` that runs global rank 0 (the one printing progress).
    torchrun orders nodes by address: pod 0 on a cluster, the earlier process here."""
    pods = sorted(p["metadata"]["name"] for p in env.pods(JOB)
                  if p["metadata"]["name"].startswith(f"{JOB}-g{generation}-"))
    for pod in pods:
        if any(when >= since and (STEP.match(text) or text.startswith("summary "))
               for when, text in env.log_lines(pod)):
            return pod
    raise AssertionError(f"no pod of group {generation} printed progress: {pods}")


def finish(env: Environment, started: float) -> tuple[dict[str, Any], str]:
    """Wait for success; the status and rank 0's log of the last group."""
    status = env.wait_phase(JOB, "Succeeded")
    return status, env.logs(rank0_pod(env, status["groupGeneration"], started))


def train_through(env: Environment, fault: str, inject: Callable[[], None]) -> Recovery:
    """Run the example job, ``inject`` a fault at FAULT_AFTER_STEP, and measure the recovery."""
    started = start_job(env)
    env.wait_step(JOB, FAULT_AFTER_STEP)
    struck = time.time()
    before = [int(m[1]) for t, text in env.log_lines(rank0_pod(env, 0, started))
              if started <= t <= struck and (m := STEP.match(text))]
    inject()
    status, logs = finish(env, started)
    resumed = RESUMED.search(logs)
    if resumed is None:
        raise AssertionError(f"the last group did not resume from a checkpoint:\n{logs[-3000:]}")
    when, _ = first_step_after(env.log_lines(rank0_pod(env, status["groupGeneration"], struck)),
                               struck)
    return Recovery(fault=fault, last_step_before=max(before, default=0),
                    resumed_step=int(resumed[2]), seconds_to_first_step=when - struck,
                    restarts=status["restarts"], final_loss=final_summary(logs)["loss"])
