"""Run a DreamTrainJob manifest on this machine: ``dream-trainer run examples/jobs/llama.yaml``.

The same manifest a cluster runs, with the same pods: each "node" is the worker pod the operator
would create (``group.desired_group``), its container run as a local ``torchrun`` agent with the
pod's environment contract. The only local changes are the ones a single machine forces: the
rendezvous and progress ports are free loopback ports, Secrets are not read (your own environment
is inherited instead), and without ``spec.checkpoint`` checkpoints go to a fresh local directory.

Like the operator, the runner restarts the whole group when any node fails (up to
``spec.restartPolicy.maxRestarts``, after its backoff) with the next ``DREAM_RESTART_COUNT``, so the
runtime resumes from the last committed checkpoint. ``--fail-node-at-step N`` kills one node's
agent once rank 0 reports step N, to watch that happen.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from dream_trainer import contract
from pydantic import ValidationError

from . import api, group, localpod, proctree

_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class ManifestError(ValueError):
    """The manifest cannot run; the message names the file and the field."""


def load_job(path: str | Path, extra_args: list[str] | None = None) -> api.DreamTrainJob:
    """The one DreamTrainJob in a YAML file, validated with the operator's own models (``extra_args``
    are appended to ``spec.args``). It gets a fresh uid, as the API server would give it."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except (OSError, yaml.YAMLError) as error:
        raise ManifestError(f"{path}: cannot read the manifest: {error}") from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == api.KIND]
    if len(jobs) != 1:
        raise ManifestError(f"{path}: expected exactly one document of kind {api.KIND}, "
                            f"found {len(jobs)}")
    manifest = jobs[0]
    if manifest.get("apiVersion") != api.API_VERSION:
        raise ManifestError(f"{path}: apiVersion: {manifest.get('apiVersion')!r}; "
                            f"use {api.API_VERSION!r}")
    meta = manifest.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > api.MAX_JOB_NAME_LENGTH:
        raise ManifestError(f"{path}: metadata.name: {name!r} must be a DNS label of at most "
                            f"{api.MAX_JOB_NAME_LENGTH} lowercase letters, digits and '-'")
    spec = dict(manifest.get("spec") or {})
    if extra_args:
        spec["args"] = list(spec.get("args") or []) + list(extra_args)
    body = {"metadata": {**meta, "namespace": meta.get("namespace", "default"),
                         "uid": str(uuid.uuid4())}, "spec": spec}
    try:
        return api.parse(api.DreamTrainJob, body)
    except ValidationError as error:
        raise ManifestError(f"{path}: {api.describe_validation_error(error, 'spec')}") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class NodeCommand:
    rank: int
    argv: list[str]
    env: dict[str, str]
    grace_seconds: float


def node_commands(job: api.DreamTrainJob, generation: int, checkpoint_uri: str,
                  settings: group.GroupSettings, base_env: dict[str, str] | None = None,
                  log_dir: str | None = None) -> list[NodeCommand]:
    """What each node runs in group ``generation``: the pod's container, localised (with
    ``$DREAM_LOG_DIR`` = ``log_dir``, so the trainer's metrics and loss curve land next to the
    nodes' logs)."""
    _, pods = group.desired_group(job, generation, settings)
    commands = []
    for pod in pods:
        container = dict(pod["spec"]["containers"][0])
        # Secrets live in the cluster; locally the user's own environment stands in for them.
        container.pop("envFrom", None)
        container["env"] = [e for e in container["env"] if "valueFrom" not in e]
        env = localpod.container_env(container)
        env[group.RDZV_ENDPOINT_ENV] = f"127.0.0.1:{settings.rendezvous_port}"
        env[contract.CHECKPOINT_URI] = checkpoint_uri
        if log_dir is not None:
            env.setdefault(contract.LOG_DIR, log_dir)  # the manifest's own choice wins
        argv = localpod.container_argv(container, env)
        if argv[0] == "torchrun":  # the same torch as this runner's, whatever PATH says
            argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        full_env = {**(os.environ if base_env is None else base_env), **env}
        commands.append(NodeCommand(int(pod["metadata"]["labels"][group.LABEL_RANK]), argv,
                                    full_env, pod["spec"]["terminationGracePeriodSeconds"]))
    return commands


def backoff_seconds(policy: api.RestartPolicy, restarts: int) -> float:
    """The operator's backoff before restart number ``restarts`` (1-based)."""
    return float(min(policy.backoff_seconds * 2 ** max(restarts - 1, 0), policy.max_backoff_seconds))


def progress(port: int, timeout: float = 0.5) -> dict[str, Any] | None:
    """Rank 0's ``/progress``, or None while it is not serving."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


@dataclass
class _Node:
    command: NodeCommand
    process: subprocess.Popen[bytes]
    reader: threading.Thread
    killed: bool = False


@dataclass
class LocalRunner:
    """Runs a job's group of nodes as local process groups until it succeeds or gives up."""

    job: api.DreamTrainJob
    run_dir: Path
    checkpoint_uri: str
    fail_node_at_step: int | None = None
    fail_node: int | None = None
    """Which node ``fail_node_at_step`` kills (default: the last)."""
    out: TextIO = field(default_factory=lambda: sys.stdout)
    base_env: dict[str, str] | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    """(time, what) of each group start, injected failure and exit, for tests and benchmarks."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: bool = False

    def say(self, text: str) -> None:
        with self._lock:
            print(f"dream-trainer: {text}", file=self.out, flush=True)

    def _event(self, what: str) -> None:
        self.events.append((time.time(), what))

    def _forward(self, rank: int, generation: int, stream: Any) -> None:
        log = (self.run_dir / f"node-{rank}.g{generation}.log").open("w")
        with log:
            for raw in iter(stream.readline, b""):
                line = raw.decode(errors="replace")
                log.write(line)
                log.flush()
                with self._lock:
                    self.out.write(f"[node {rank}] {line}")
                    self.out.flush()

    def _start(self, generation: int) -> tuple[list[_Node], int]:
        settings = group.GroupSettings(rendezvous_port=free_port(), progress_port=free_port())
        nodes = []
        for command in node_commands(self.job, generation, self.checkpoint_uri, settings,
                                     self.base_env, str(self.run_dir.resolve())):
            process = subprocess.Popen(command.argv, env=command.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            reader = threading.Thread(target=self._forward,
                                      args=(command.rank, generation, process.stdout), daemon=True)
            reader.start()
            nodes.append(_Node(command, process, reader))
        self._event(f"group {generation} started")
        return nodes, settings.progress_port

    @staticmethod
    def _signal(node: _Node, sig: signal.Signals) -> None:
        """SIGTERM goes to the agent, which forwards it to its workers (as a container's PID 1
        gets it); SIGKILL goes to the whole tree (as a container runtime kills the cgroup)."""
        if sig == signal.SIGKILL:
            proctree.kill_tree(node.process.pid, sig)
            return
        try:
            os.kill(node.process.pid, sig)
        except ProcessLookupError:
            pass

    def _stop(self, nodes: list[_Node]) -> None:
        """SIGTERM every live node (the runtime checkpoints and exits 143), SIGKILL after the
        pod's grace period, as the kubelet does when the operator deletes a group."""
        live = [n for n in nodes if n.process.poll() is None]
        for node in live:
            self._signal(node, signal.SIGTERM)
        deadline = time.monotonic() + max((n.command.grace_seconds for n in live), default=0)
        for node in live:
            try:
                node.process.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                self._signal(node, signal.SIGKILL)
                node.process.wait()
        for node in nodes:
            node.reader.join(5)

    def _supervise(self, nodes: list[_Node], port: int, generation: int) -> bool:
        """Wait until every node succeeded (True) or one failed (False, the others stopped)."""
        victim = self.fail_node if self.fail_node is not None else len(nodes) - 1
        inject = self.fail_node_at_step is not None and generation == 0
        while True:
            codes = [n.process.poll() for n in nodes]
            if all(c == 0 for c in codes):
                return True
            failed = [(n.command.rank, c) for n, c in zip(nodes, codes) if c not in (None, 0)]
            if failed or self._stopping:
                for rank, code in failed:
                    self._event(f"node {rank} exited {code}")
                    self.say(f"node {rank} exited with {code}; stopping the group")
                self._stop(nodes)
                return False
            if inject:
                seen = progress(port)
                if seen and seen.get("step", 0) >= self.fail_node_at_step:
                    self.say(f"--fail-node-at-step {self.fail_node_at_step}: killing node "
                             f"{victim} at step {seen['step']}")
                    self._event(f"killed node {victim} at step {seen['step']}")
                    self._signal(nodes[victim], signal.SIGKILL)
                    inject = False
            time.sleep(0.1)

    def run(self) -> int:
        """Train to the end; the exit status is 0 on success, 1 when restarts ran out."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        spec = self.job.spec
        self.say(f"job {self.job.metadata.name}: {spec.nodes.max_nodes} node(s) x "
                 f"{spec.nproc_per_node} process(es); checkpoints in {self.checkpoint_uri}; "
                 f"logs in {self.run_dir}")
        policy = spec.restart_policy
        generation = 0
        previous = signal.signal(signal.SIGINT, self._interrupt)
        try:
            while True:
                nodes, port = self._start(generation)
                if self._supervise(nodes, port, generation):
                    self._event("succeeded")
                    self.say(f"job {self.job.metadata.name} succeeded")
                    return 0
                if self._stopping:
                    return 130
                if generation >= policy.max_restarts:
                    self.say(f"job failed: {generation} restart(s) used of "
                             f"restartPolicy.maxRestarts={policy.max_restarts}")
                    return 1
                generation += 1
                wait = backoff_seconds(policy, generation)
                self.say(f"restart {generation}/{policy.max_restarts} in {wait:.0f}s "
                         f"(DREAM_RESTART_COUNT={generation}); resuming from the last checkpoint")
                time.sleep(wait)
        finally:
            signal.signal(signal.SIGINT, previous)

    def _interrupt(self, signum: int, frame: Any) -> None:
        self.say("interrupted: stopping the nodes (they checkpoint first)")
        self._stopping = True


def default_run_dir(job: api.DreamTrainJob) -> Path:
    return Path("dream-runs") / job.metadata.name / time.strftime("%Y%m%d-%H%M%S")


def main(manifest: str, extra_args: list[str], *, fail_node_at_step: int | None = None,
         fail_node: int | None = None, checkpoint: str | None = None,
         run_dir: str | None = None) -> int:
    """``dream-trainer run MANIFEST.yaml``: validate, then run (exit status 2 on bad input)."""
    try:
        job = load_job(manifest, extra_args)
        nodes = job.spec.nodes.max_nodes
        if fail_node is not None and not 0 <= fail_node < nodes:
            raise ManifestError(f"--fail-node={fail_node}: the job has nodes 0..{nodes - 1}")
        if fail_node_at_step is not None and fail_node_at_step < 1:
            raise ManifestError(f"--fail-node-at-step={fail_node_at_step}: must be >= 1")
        script = job.spec.command[0]
        if script not in ("-m", "--module") and not Path(script).is_file():
            raise ManifestError(f"{manifest}: spec.command[0]: {script!r} is not a file here; "
                                "run from the directory the image's WORKDIR stands for "
                                "(the repository root for the examples)")
    except ManifestError as error:
        print(f"dream-trainer run: {error}", file=sys.stderr)
        return 2
    directory = Path(run_dir) if run_dir else default_run_dir(job)
    uri = checkpoint or (job.spec.checkpoint.uri if job.spec.checkpoint else None)
    uri = uri or str((directory / "checkpoints").resolve())
    runner = LocalRunner(job, directory, uri, fail_node_at_step=fail_node_at_step,
                         fail_node=fail_node)
    return runner.run()
