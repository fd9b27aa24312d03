"""The torchx scheduler ``dreamtrainjob`` and the ``dream.trainer`` component, against the real
operator (kopf, in a thread) and the Kubernetes API emulator with simulated nodes; one test drives
the ``torchx`` command line."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from dream_operator import api, torchx_components, torchx_scheduler
from dream_operator.group import LABEL_JOB
from dream_operator.torchx_scheduler import Program, app_state, split_program
from operator_harness import OperatorThread, wait_for
from torchx import specs
from torchx.schedulers import DEFAULT_SCHEDULER_MODULES, get_scheduler_factories
from torchx.specs import AppState
from torchx.specs.finder import ModuleComponentsFinder, get_components

from e2e.kubeapi import KubeAPI, SimCluster

# kubernetes' client calls urllib3 1.26's deprecated getheaders() (torchx 0.7 pins urllib3<2).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:kubernetes.client.rest")

NS = "default"
CRD = Path(__file__).parents[1] / "crds" / "dreamtrainer.dev_dreamtrainjobs.yaml"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One emulated cluster with the CRD and a running operator for the whole file (each test
    uses its own jobs, whose names carry a random suffix)."""
    with KubeAPI() as kube:
        kube.install_crd(yaml.safe_load(CRD.read_text()))
        kubeconfig = kube.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
        nodes = ["node-0", "node-1", "node-2"]
        with SimCluster(kube, nodes=nodes) as sim, OperatorThread(kubeconfig):
            client = kubernetes.config.new_client_from_config(str(kubeconfig))
            yield sim, kubeconfig, client


@pytest.fixture
def scheduler(cluster):
    _, kubeconfig, _ = cluster
    sched = torchx_scheduler.create_scheduler("test", kubeconfig=str(kubeconfig))
    yield sched
    sched.close()


def pods(client, job: str) -> list[Any]:
    return kubernetes.client.CoreV1Api(client).list_namespaced_pod(
        NS, label_selector=f"{LABEL_JOB}={job}").items


def state_is(sched, app_id: str, *states: AppState, restarts: int | None = None):
    def check():
        desc = sched.describe(app_id)
        if desc is None or desc.state not in states:
            return None
        return desc if restarts is None or desc.num_restarts == restarts else None
    return check


def running_pods(client, job: str, count: int) -> list[str]:
    wait_for(lambda: len([p for p in pods(client, job) if p.status.phase == "Running"]) == count,
             what=f"{count} running pods of {job}")
    return sorted(p.metadata.name for p in pods(client, job))


# --- registration ---------------------------------------------------------------------------


def test_scheduler_registered_beside_torchx_builtins():
    factories = get_scheduler_factories()
    assert {"dreamtrainjob", "local_cwd", "kubernetes"} <= set(factories)
    # Our entry points replace torchx's table: each built-in must point where torchx's does.
    ours = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="torchx.schedulers")}
    for name, module in DEFAULT_SCHEDULER_MODULES.items():
        assert ours.get(name) == f"{module}:create_scheduler", name
    assert isinstance(factories["dreamtrainjob"]("s"), torchx_scheduler.DreamTrainJobScheduler)


def test_components_registered_beside_torchx_builtins():
    names = set(get_components())
    assert "dream.trainer" in names
    builtins = {c.name for c in ModuleComponentsFinder("torchx.components", "").find()
                if not c.validation_errors}
    assert {"dist.ddp", "utils.echo"} <= builtins <= names


# --- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize("entrypoint,args,expected", [
    ("train.py", ["--lr", "1"], Program(["train.py"], ["--lr", "1"])),
    ("python", ["-u", "train.py", "x"], Program(["train.py"], ["x"])),
    ("python3", ["-m", "pkg.train", "x"], Program(["-m", "pkg.train"], ["x"])),
    ("torchrun", ["--nnodes=2", "--nproc-per-node", "4", "--standalone", "train.py", "-m", "x"],
     Program(["train.py"], ["-m", "x"], "4")),
    ("torchrun", ["-m", "--nproc_per_node=gpu", "--tee", "3", "pkg.train"],
     Program(["-m", "pkg.train"], [], "gpu")),
    ("python", ["-m", "torch.distributed.run", "--rdzv-backend", "c10d", "train.py"],
     Program(["train.py"], [])),
    # torchx's dist.ddp: bash -c with the rendezvous endpoint left to the shell
    ("bash", ["-c", ("torchrun --rdzv_backend c10d"
                     " --rdzv_endpoint ${TORCHX_RANK0_HOST:=localhost}:29500 --nnodes 1:2"
                     " --nproc_per_node 4 --tee 3 --role '' train.py --name 'a b'")],
     Program(["train.py"], ["--name", "a b"], "4")),
])
def test_split_program(entrypoint, args, expected):
    assert split_program(entrypoint, args) == expected


@pytest.mark.parametrize("entrypoint,args,message", [
    ("echo", ["hi"], "'echo hi' is not a Python program"),
    ("bash", ["-c", "torchrun train.py | tee log"], "uses '|'"),
    ("torchrun", ["--no-python", "train.sh"], "--no-python is not supported"),
    ("torchrun", ["--nproc-per-node=2"], "no training script or module"),
    ("python", ["-c", "print(1)"], "expected python [-u] <script> or python -m <module>"),
])
def test_split_program_rejects(entrypoint, args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        split_program(entrypoint, args)


def test_torchrun_flags_match_torchs_parser():
    from torch.distributed.run import get_args_parser

    flags = {o for a in get_args_parser()._actions if a.nargs == 0 for o in a.option_strings}
    assert flags - {"-h", "--help"} == torchx_scheduler._TORCHRUN_FLAGS


def test_app_state_mapping():
    def job(phase: str | None, deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": "j"}
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return {"metadata": meta, "status": {"phase": phase} if phase else {}}

    assert app_state(job(None)) == AppState.SUBMITTED
    expected = {"Pending": AppState.PENDING, "Running": AppState.RUNNING,
                "Restarting": AppState.PENDING, "Suspended": AppState.PENDING,
                "Succeeded": AppState.SUCCEEDED, "Failed": AppState.FAILED, "Odd": AppState.UNKNOWN}
    assert {phase: app_state(job(phase)) for phase in expected} == expected
    assert {p.value for p in api.Phase} <= set(torchx_scheduler.PHASE_STATES)
    assert app_state(job("Running", deleting=True)) == AppState.CANCELLED
    assert app_state(job("Succeeded", deleting=True)) == AppState.SUCCEEDED


def test_job_names():
    assert torchx_scheduler.job_name("My_App.v2", "abcde") == "my-app-v2-abcde"
    long = torchx_scheduler.job_name("x" * 100)
    assert len(long) == api.MAX_JOB_NAME_LENGTH and re.match(r"^x+-[a-z0-9]{5}$", long)
    assert torchx_scheduler.job_name("a") != torchx_scheduler.job_name("a")


# --- dry run --------------------------------------------------------------------------------


def test_dryrun_of_the_component(scheduler):
    app = torchx_components.trainer(
        "--max-steps", "10", script="examples/llama/train.py", image="dream:test", nnodes="2",
        gpu=8, cpu=16, memMB=65536, env={"LR": "3e-4"}, checkpoint_uri="s3://bucket/llama",
        max_restarts=5)
    info = scheduler.submit_dryrun(app, {"namespace": "ml", "wandb_project": "llama",
                                         "checkpoint_secret": "s3-credentials"})
    manifest = info.request
    name = manifest["metadata"]["name"]
    assert re.match(r"^train-[a-z0-9]{5}$", name)
    assert manifest == {
        "apiVersion": "dreamtrainer.dev/v1alpha1",
        "kind": "DreamTrainJob",
        "metadata": {
            "name": name, "namespace": "ml",
            "labels": {"app.kubernetes.io/managed-by": "torchx"},
            "annotations": {"torchx.pytorch.org/app-name": "train",
                            "torchx.pytorch.org/role-name": "trainer"},
        },
        "spec": {
            "image": "dream:test",
            "command": ["examples/llama/train.py"],
            "args": ["--max-steps", "10"],
            "env": [{"name": "LR", "value": "3e-4"}],
            "nodes": {"count": 2},
            "nprocPerNode": 8,
            "resources": {"requests": {"cpu": 16, "memory": "65536Mi"},
                          "limits": {"memory": "65536Mi", "nvidia.com/gpu": 8}},
            "restartPolicy": {"maxRestarts": 5},
            "checkpoint": {"uri": "s3://bucket/llama", "secretRef": {"name": "s3-credentials"}},
            "wandb": {"project": "llama"},
        },
    }
    job = api.parse(api.DreamTrainJob, manifest)
    assert job.spec.checkpoint.uri == "s3://bucket/llama" and job.spec.nproc_per_node == 8
    assert "nvidia.com/gpu: 8" in str(info)  # the dry run prints the manifest as YAML


def test_dryrun_of_torchx_ddp_and_elastic_nodes(scheduler):
    from torchx.components.dist import ddp

    app = ddp("--epochs", "1", script="train.py", j="1:3x2", image="dream:test")
    spec = scheduler.submit_dryrun(app, {"nproc_per_node": 4}).request["spec"]
    assert spec["command"] == ["train.py"] and spec["args"] == ["--epochs", "1"]
    assert spec["nodes"] == {"min": 1, "max": 3}
    assert spec["nprocPerNode"] == 4  # the run option wins over ddp's --nproc_per_node 2


def two_roles() -> specs.AppDef:
    role = specs.Role(name="a", image="dream:test", entrypoint="train.py")
    other = specs.Role(name="b", image="x", entrypoint="b.py")
    return specs.AppDef(name="two", roles=[role, other])


@pytest.mark.parametrize("app,cfg,message", [
    (two_roles(), {}, "app 'two' has 2 roles ('a', 'b'): a DreamTrainJob runs exactly one role"),
    (torchx_components.trainer(script="t.py", name="9lives"), {},
     "app name '9lives' cannot name a DreamTrainJob: it must start with a letter"),
    (torchx_components.trainer(script="t.py", checkpoint_uri="http://x"), {},
     "spec.checkpoint.uri: String should match pattern"),
    (torchx_components.trainer(script="t.py"), {"image_pull_policy": "Sometimes"},
     "spec.imagePullPolicy: Input should be 'Always', 'IfNotPresent' or 'Never'"),
    (torchx_components.trainer(script="t.py", env={"DREAM_JOB_NAME": "x"}), {},
     "spec.env[0].name: 'DREAM_JOB_NAME' is set by the operator"),
    (torchx_components.trainer(script="t.py"), {"checkpoint_secret": "s"},
     "checkpoint_secret needs a checkpoint URI"),
    (specs.AppDef(name="r", roles=[specs.Role(name="r", image="i", entrypoint="t.py",
                                              args=["--rank", specs.macros.replica_id])]), {},
     "${replica_id} is not supported"),
])
def test_bad_input_fails_at_dryrun(scheduler, app, cfg, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        scheduler.submit_dryrun(app, cfg)


def test_component_rejects_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of --script and -m"):
        torchx_components.trainer(script="t.py", m="pkg.t")
    with pytest.raises(ValueError, match="--nnodes '3:2'"):
        torchx_components.trainer(script="t.py", nnodes="3:2")


# --- against the operator -------------------------------------------------------------------


def small(*args: str, **kwargs: Any) -> specs.AppDef:
    return torchx_components.trainer(*args, script="train.py", image="dream:test", cpu=1,
                                     memMB=256, **kwargs)


def test_schedule_runs_and_succeeds(cluster, scheduler):
    sim, _, client = cluster
    app_id = scheduler.submit(small("--steps", "3", nnodes="2"), {"namespace": NS})
    namespace, name = app_id.split(":")
    assert namespace == NS and scheduler.describe(app_id).state in (
        AppState.SUBMITTED, AppState.PENDING, AppState.RUNNING)
    names = running_pods(client, name, 2)
    assert names == [f"{name}-g0-0", f"{name}-g0-1"]
    desc = wait_for(state_is(scheduler, app_id, AppState.RUNNING), what="RUNNING")
    assert desc.msg.startswith("Running") and desc.num_restarts == 0
    assert desc.roles[0].name == "trainer" and desc.roles[0].num_replicas == 2
    [role_status] = desc.roles_statuses
    assert [(r.id, r.state) for r in role_status.replicas] == [(0, AppState.RUNNING),
                                                                (1, AppState.RUNNING)]
    assert role_status.replicas[1].hostname == f"{name}-1.{name}.{NS}.svc"
    assert app_id in {a.app_id for a in scheduler.list()}
    for pod in names:
        sim.succeed_pod(NS, pod)
    desc = wait_for(state_is(scheduler, app_id, AppState.SUCCEEDED), what="SUCCEEDED")
    assert all(r.state == AppState.SUCCEEDED for r in desc.roles_statuses[0].replicas)


def test_failure_without_restarts_fails(cluster, scheduler):
    sim, _, client = cluster
    app_id = scheduler.submit(small(), {"max_restarts": 0})
    name = app_id.split(":")[1]
    [pod] = running_pods(client, name, 1)
    sim.fail_pod(NS, pod, exit_code=3)
    desc = wait_for(state_is(scheduler, app_id, AppState.FAILED), what="FAILED")
    assert desc.msg.startswith("Failed: ") and len(desc.msg) > len("Failed: ")


def test_restart_reports_pending_then_running_with_restarts(cluster, scheduler):
    """A gang restart (metadata overlay sets a short backoff) reads PENDING, counted in
    num_restarts; logs then come from the new group's pods."""
    sim, _, client = cluster
    app = small()
    app.roles[0].metadata["dreamtrainjob.spec"] = {
        "restartPolicy": {"maxRestarts": 2, "backoffSeconds": 2}}
    app_id = scheduler.submit(app, {})
    name = app_id.split(":")[1]
    wait_for(state_is(scheduler, app_id, AppState.RUNNING), what="RUNNING")
    sim.fail_pod(NS, f"{name}-g0-0")
    desc = wait_for(state_is(scheduler, app_id, AppState.PENDING, restarts=1),
                    what="PENDING while restarting")
    assert desc.msg.startswith("Restarting")
    wait_for(lambda: f"{name}-g1-0" in running_pods(client, name, 1), what="generation 1")
    sim.log(NS, f"{name}-g1-0", "second life\n")
    desc = wait_for(state_is(scheduler, app_id, AppState.RUNNING), what="RUNNING again")
    assert desc.num_restarts == 1
    assert list(scheduler.log_iter(app_id, "trainer", 0)) == ["second life\n"]
    scheduler.cancel(app_id)


def test_cancel_deletes_the_job_and_its_pods(cluster, scheduler):
    _, _, client = cluster
    app_id = scheduler.submit(small(nnodes="2"), {})
    name = app_id.split(":")[1]
    running_pods(client, name, 2)
    scheduler.cancel(app_id)
    assert scheduler.describe(app_id) is None
    wait_for(lambda: not pods(client, name), what="pods garbage-collected")
    scheduler.cancel(app_id)  # idempotent


def test_log_iter_reads_filters_and_follows(cluster, scheduler):
    sim, _, client = cluster
    app_id = scheduler.submit(small(nnodes="2"), {})
    name = app_id.split(":")[1]
    running_pods(client, name, 2)
    sim.log(NS, f"{name}-g0-1", "step 1 loss=2.0\nstep 2 loss=1.5\nsaved checkpoint\n")
    assert list(scheduler.log_iter(app_id, "trainer", 1)) == [
        "step 1 loss=2.0\n", "step 2 loss=1.5\n", "saved checkpoint\n"]
    filtered = scheduler.log_iter(app_id, "trainer", 1, regex=r"loss=1\.")
    assert list(filtered) == ["step 2 loss=1.5\n"]
    assert list(scheduler.log_iter(app_id, "trainer", 0)) == []
    with pytest.raises(ValueError, match="has no role 'ps'; its role is 'trainer'"):
        scheduler.log_iter(app_id, "ps", 0)

    followed: list[str] = []
    reader = threading.Thread(target=lambda: followed.extend(
        scheduler.log_iter(app_id, "trainer", 0, should_tail=True)))
    reader.start()
    sim.log(NS, f"{name}-g0-0", "first\nsec")
    wait_for(lambda: followed == ["first\n"], what="a followed line")
    sim.log(NS, f"{name}-g0-0", "ond\nlast")
    sim.succeed_pod(NS, f"{name}-g0-0")  # the stream ends with the container
    reader.join(10)
    assert not reader.is_alive() and followed == ["first\n", "second\n", "last"]
    scheduler.cancel(app_id)


def test_cli_run_status_log_cancel(cluster, tmp_path):
    sim, kubeconfig, client = cluster
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def torchx(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "torchx.cli.main", *args], check=False,
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    run = torchx("run", "-s", "dreamtrainjob", "-cfg", f"namespace={NS},max_restarts=0",
                 "dream.trainer", "--script", "train.py", "--image", "dream:test", "--nnodes", "2",
                 "--nproc_per_node", "2", "--cpu", "1", "--memMB", "256", "--", "--steps", "5")
    assert run.returncode == 0, run.stderr
    handle = run.stdout.strip().splitlines()[-1]
    match = re.fullmatch(rf"dreamtrainjob://torchx/{NS}:(train-[a-z0-9]{{5}})", handle)
    assert match, run.stdout
    name = match[1]
    job = kubernetes.client.CustomObjectsApi(client).get_namespaced_custom_object(
        api.GROUP, api.VERSION, NS, api.PLURAL, name)
    assert job["spec"]["args"] == ["--steps", "5"] and job["spec"]["nodes"] == {"count": 2}
    assert job["spec"]["nprocPerNode"] == 2

    names = running_pods(client, name, 2)
    sim.log(NS, names[0], "hello from rank 0\n")
    status = torchx("status", handle)
    assert status.returncode == 0, status.stderr
    assert "State: RUNNING" in status.stdout, status.stdout
    log = torchx("log", f"{handle}/trainer/0")
    assert log.returncode == 0 and "hello from rank 0" in log.stdout, log.stderr
    listed = torchx("list", "-s", "dreamtrainjob")
    assert listed.returncode == 0 and handle in listed.stdout, listed.stdout + listed.stderr
    cancel = torchx("cancel", handle)
    assert cancel.returncode == 0, cancel.stderr
    wait_for(lambda: not pods(client, name), what="pods of the cancelled job gone")


def test_component_runs_locally_on_torchx_builtin_local_cwd(tmp_path):
    """torchx's own schedulers stay usable, and a one-node dream.trainer app is a plain
    ``torchrun --standalone`` there."""
    (tmp_path / "hello.py").write_text(
        "import os\nprint('rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'])\n")
    run = subprocess.run(
        [sys.executable, "-m", "torchx.cli.main", "run", "-s", "local_cwd", "dream.trainer",
         "--script", "hello.py", "--nproc_per_node", "2"],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "rank 1 of 2" in output and "SUCCEEDED" in output, output
