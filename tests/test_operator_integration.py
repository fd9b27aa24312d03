"""The real kopf operator against the Kubernetes API emulator (with a simulated scheduler and
kubelet): jobs applied with kubectl train, fail, restart, suspend, finish and get deleted."""

from __future__ import annotations

import http.server
import itertools
import json
import socket
import subprocess
import threading
import urllib.request
from typing import Any

import kubernetes
import pytest
import yaml
from dream_operator import api
from dream_operator.group import LABEL_GENERATION, LABEL_JOB
from hypothesis import HealthCheck, given, settings
from operator_fixtures import broken_manifests
from operator_harness import OperatorThread, crd_manifest, wait_for

from e2e.kubeapi import KubeAPI, SimCluster

NS = "default"


@pytest.fixture
def cluster(tmp_path):
    with KubeAPI() as kube:
        kube.install_crd(crd_manifest())
        sim = SimCluster(kube, nodes=["node-0", "node-1", "node-2"])
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        client = kubernetes.config.new_client_from_config(str(kubeconfig))
        try:
            yield kube, sim, kubeconfig, client
        finally:
            sim.stop()


def manifest(name: str = "job-a", **spec: Any) -> dict[str, Any]:
    base = {"image": "dream:test", "command": ["train.py"], "nodes": {"count": 2},
            "nprocPerNode": 1, "restartPolicy": {"maxRestarts": 3, "backoffSeconds": 0}}
    return {"apiVersion": api.API_VERSION, "kind": api.KIND,
            "metadata": {"name": name, "namespace": NS}, "spec": {**base, **spec}}


def kubectl(kubeconfig, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], input=input,
                          capture_output=True, text=True, check=check, timeout=60)


def apply(kubeconfig, body: dict[str, Any]) -> None:
    kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(body))


def get_job(client, name: str) -> dict[str, Any]:
    return kubernetes.client.CustomObjectsApi(client).get_namespaced_custom_object(
        api.GROUP, api.VERSION, NS, api.PLURAL, name)


def status(client, name: str) -> dict[str, Any]:
    return get_job(client, name).get("status") or {}


def pods(client, job: str) -> list[Any]:
    return kubernetes.client.CoreV1Api(client).list_namespaced_pod(
        NS, label_selector=f"{LABEL_JOB}={job}").items


def phase_is(client, name: str, phase: str):
    return lambda: status(client, name).get("phase") == phase and status(client, name)


def test_job_runs_restarts_on_failure_and_succeeds(cluster):
    kube, sim, kubeconfig, client = cluster
    with OperatorThread(kubeconfig):
        apply(kubeconfig, manifest())
        running = wait_for(phase_is(client, "job-a", "Running"), what="Running")
        assert running["readyNodes"] == 2 and running["worldSize"] == 2
        names = sorted(p.metadata.name for p in pods(client, "job-a"))
        assert names == ["job-a-g0-0", "job-a-g0-1"]
        svc = kubernetes.client.CoreV1Api(client).read_namespaced_service("job-a", NS)
        assert svc.spec.cluster_ip == "None"

        sim.fail_pod(NS, "job-a-g0-1", exit_code=1)
        wait_for(lambda: status(client, "job-a").get("restarts") == 1, what="restart counted")
        wait_for(lambda: sorted(p.metadata.name for p in pods(client, "job-a")) == ["job-a-g1-0", "job-a-g1-1"],
                 what="generation 1 replaces generation 0")
        wait_for(phase_is(client, "job-a", "Running"), what="Running again")
        for p in pods(client, "job-a"):
            sim.succeed_pod(NS, p.metadata.name)
        done = wait_for(phase_is(client, "job-a", "Succeeded"), what="Succeeded")
        assert done["restarts"] == 1 and done["groupGeneration"] == 1
        types = {c["type"]: c for c in done["conditions"]}
        assert types["Succeeded"]["status"] == "True" and types["Restarting"]["status"] == "False"

    table = kubectl(kubeconfig, "get", "dtj", "job-a").stdout
    assert "Succeeded" in table.splitlines()[1] and "RESTARTS" in table.splitlines()[0]
    events = kubernetes.client.CoreV1Api(client).list_namespaced_event(NS).items
    reasons = {e.reason for e in events if e.involved_object.name == "job-a"}
    assert {"JobCreated", "AllNodesRunning", "WorkerFailed", "AllWorkersSucceeded"} <= reasons


def test_dead_node_pods_are_force_deleted_and_group_restarts(cluster):
    kube, sim, kubeconfig, client = cluster
    with OperatorThread(kubeconfig):
        apply(kubeconfig, manifest("job-b"))
        wait_for(phase_is(client, "job-b", "Running"))
        victim = next(p for p in pods(client, "job-b") if p.metadata.name.endswith("-1"))
        sim.set_node_ready(victim.spec.node_name, False)
        wait_for(lambda: status(client, "job-b").get("restarts") == 1, what="node loss restarts the group")
        # The pod on the dead node cannot be confirmed by its kubelet: force deletion frees it.
        wait_for(lambda: all(p.metadata.labels[LABEL_GENERATION] == "1" for p in pods(client, "job-b"))
                 and len(pods(client, "job-b")) == 2, what="old group gone, new group created")
        wait_for(phase_is(client, "job-b", "Running"))
        assert all(p.spec.node_name != victim.spec.node_name for p in pods(client, "job-b"))


def test_operator_restart_creates_no_duplicates_and_keeps_status(cluster):
    kube, sim, kubeconfig, client = cluster
    created: list[str] = []
    kube.store.subscribe(lambda e: created.append(e.object["metadata"]["name"])
                         if e.type == "ADDED" and e.object.get("kind") == "Pod" else None)
    with OperatorThread(kubeconfig):
        apply(kubeconfig, manifest("job-c"))
        wait_for(phase_is(client, "job-c", "Running"))
        sim.fail_pod(NS, "job-c-g0-0", exit_code=1)
        wait_for(lambda: status(client, "job-c").get("restarts") == 1)
    before = status(client, "job-c")
    with OperatorThread(kubeconfig, identity="op-1"):
        wait_for(phase_is(client, "job-c", "Running"), what="Running after operator restart")
        after = status(client, "job-c")
        assert after["restarts"] == 1 and after["groupGeneration"] == before["groupGeneration"]
        assert len(pods(client, "job-c")) == 2
    # Exactly two groups of two pods were ever created: nothing twice, across the restart.
    assert sorted(created) == ["job-c-g0-0", "job-c-g0-1", "job-c-g1-0", "job-c-g1-1"]


def test_two_replicas_one_leader(cluster):
    kube, sim, kubeconfig, client = cluster
    with OperatorThread(kubeconfig, identity="op-a") as a, OperatorThread(kubeconfig, identity="op-b"):
        apply(kubeconfig, manifest("job-d"))
        wait_for(phase_is(client, "job-d", "Running"))
        a.stop()  # the leader (started first) goes away; the other takes over
        sim.fail_pod(NS, "job-d-g0-1", exit_code=1)
        wait_for(lambda: status(client, "job-d").get("restarts") == 1, timeout=30,
                 what="the standby replica acts after the lease expires")
        wait_for(phase_is(client, "job-d", "Running"), what="the new group runs")
        assert {p.metadata.labels[LABEL_GENERATION] for p in pods(client, "job-d")} == {"1"}


def test_delete_job_deletes_pods_and_service(cluster):
    kube, sim, kubeconfig, client = cluster
    with OperatorThread(kubeconfig):
        apply(kubeconfig, manifest("job-e"))
        wait_for(phase_is(client, "job-e", "Running"))
        kubectl(kubeconfig, "delete", "dreamtrainjob", "job-e")
        wait_for(lambda: not pods(client, "job-e"), what="pods garbage-collected")
        services = kubernetes.client.CoreV1Api(client).list_namespaced_service(NS).items
        assert "job-e" not in {s.metadata.name for s in services}


def test_suspend_and_resume(cluster):
    kube, sim, kubeconfig, client = cluster
    with OperatorThread(kubeconfig):
        apply(kubeconfig, manifest("job-f"))
        wait_for(phase_is(client, "job-f", "Running"))
        kubectl(kubeconfig, "patch", "dtj", "job-f", "--type=merge", "-p",
                json.dumps({"spec": {"runPolicy": {"suspend": True}}}))
        wait_for(phase_is(client, "job-f", "Suspended"))
        wait_for(lambda: not pods(client, "job-f"), what="pods deleted while suspended")
        kubectl(kubeconfig, "patch", "dtj", "job-f", "--type=merge", "-p",
                json.dumps({"spec": {"runPolicy": {"suspend": False}}}))
        wait_for(phase_is(client, "job-f", "Running"))
        assert {p.metadata.labels[LABEL_GENERATION] for p in pods(client, "job-f")} == {"1"}
        assert status(client, "job-f")["restarts"] == 0


def test_elastic_job_replaces_a_failed_node(cluster):
    kube, sim, kubeconfig, client = cluster
    with OperatorThread(kubeconfig):
        apply(kubeconfig, manifest("job-g", nodes={"min": 2, "max": 3}))
        wait_for(lambda: (s := status(client, "job-g")).get("phase") == "Running" and s["readyNodes"] == 3)
        first = {p.metadata.name: p.metadata.uid for p in pods(client, "job-g")}
        sim.fail_pod(NS, "job-g-g0-2", exit_code=1)
        wait_for(lambda: any(p.metadata.name == "job-g-g0-2" and p.metadata.uid != first["job-g-g0-2"]
                             and p.status.phase == "Running" for p in pods(client, "job-g")),
                 what="the failed node replaced in place")
        s = status(client, "job-g")
        assert s["restarts"] == 0 and s["phase"] == "Running"
        assert {p.metadata.uid for p in pods(client, "job-g") if not p.metadata.name.endswith("-2")} == \
            {first["job-g-g0-0"], first["job-g-g0-1"]}


def test_progress_from_rank0_reaches_the_status(cluster):
    kube, sim, kubeconfig, client = cluster
    report = {"step": 42, "epoch": 1, "loss": 1.25, "last_checkpoint": "s3://b/job-h/step_40"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(report).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with socket.socket() as probe:  # a port free on loopback; the pod's IP is 127.0.0.x
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with OperatorThread(kubeconfig, progress_port=port):
        apply(kubeconfig, manifest("job-h"))
        wait_for(phase_is(client, "job-h", "Running"))
        rank0 = next(p for p in pods(client, "job-h") if p.metadata.name.endswith("-0"))
        server = http.server.ThreadingHTTPServer((rank0.status.pod_ip, port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            s = wait_for(lambda: (status(client, "job-h").get("progress") or {}).get("step") == 42
                         and status(client, "job-h"), what="progress in status")
            assert s["progress"]["loss"] == 1.25 and s["lastCheckpoint"] == report["last_checkpoint"]
            row = kubectl(kubeconfig, "get", "dtj", "job-h").stdout.splitlines()[1]
            assert " 42 " in f" {row} "
        finally:
            server.shutdown()


def test_max_restarts_then_failed(cluster):
    kube, sim, kubeconfig, client = cluster
    with OperatorThread(kubeconfig):
        apply(kubeconfig, manifest("job-i", restartPolicy={"maxRestarts": 1, "backoffSeconds": 0}))
        for generation in (0, 1):
            wait_for(lambda: len([p for p in pods(client, "job-i")
                                  if p.metadata.labels[LABEL_GENERATION] == str(generation)
                                  and p.status.phase == "Running"]) == 2)
            sim.fail_pod(NS, f"job-i-g{generation}-0", exit_code=3)
        failed = wait_for(phase_is(client, "job-i", "Failed"))
        reason = {c["type"]: c for c in failed["conditions"]}["Failed"]["reason"]
        assert reason == "MaxRestartsExceeded" and "maxRestarts=1" in failed["message"]


# --- generated bad input against the running operator ---------------------------------------------


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    with KubeAPI() as kube:
        kube.install_crd(crd_manifest())
        sim = SimCluster(kube, nodes=["node-0", "node-1"])
        kubeconfig = kube.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
        client = kubernetes.config.new_client_from_config(str(kubeconfig))
        try:
            with OperatorThread(kubeconfig) as operator:
                yield kube, sim, kubeconfig, client, operator
        finally:
            sim.stop()


_fuzz_count = itertools.count()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=broken_manifests())
def test_bad_manifests_are_rejected_or_fail_naming_the_field(shared_cluster, body):
    kube, sim, kubeconfig, client, operator = shared_cluster
    name = f"fuzz-{next(_fuzz_count)}"
    body["metadata"] = {"name": name, "namespace": NS}
    custom = kubernetes.client.CustomObjectsApi(client)
    try:
        custom.create_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.PLURAL, body)
    except kubernetes.client.ApiException as error:
        assert error.status == 422, error.body
        causes = json.loads(error.body)["details"]["causes"]
        assert any(c["field"].startswith("spec") for c in causes), causes
        return
    s = wait_for(lambda: status(client, name).get("phase") in ("Pending", "Running", "Failed")
                 and status(client, name), what=f"{name} decided")
    if s["phase"] == "Failed":
        assert "spec." in s["message"]
    custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.PLURAL, name)


def test_operator_still_serves_after_bad_input(shared_cluster):
    kube, sim, kubeconfig, client, operator = shared_cluster
    apply(kubeconfig, manifest("after-fuzz"))
    wait_for(phase_is(client, "after-fuzz", "Running"), what="a good job runs after the bad ones")
    assert operator.error is None


def test_kubectl_rejects_an_invalid_job_naming_the_field(shared_cluster):
    kube, sim, kubeconfig, client, operator = shared_cluster
    bad = manifest("bad-range", nodes={"min": 4, "max": 2})
    result = kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert result.returncode != 0 and "spec.nodes" in result.stderr, result.stderr
    bad = manifest("bad-count", nprocPerNode=0, extra=1)
    result = kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert result.returncode != 0
    assert "spec.nprocPerNode" in result.stderr or "spec.extra" in result.stderr, result.stderr


def test_dream_operator_command_serves_metrics_and_health(cluster, tmp_path):
    kube, sim, kubeconfig, client = cluster
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    metrics_port, health_port = ports
    process = subprocess.Popen(
        ["dream-operator", "run", "--kubeconfig", str(kubeconfig), "--metrics-port", str(metrics_port),
         "--health-port", str(health_port), "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        apply(kubeconfig, manifest("job-cli"))
        wait_for(phase_is(client, "job-cli", "Running"), timeout=60, what="the command's operator runs the job")

        def get(port: int, path: str) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return response.read().decode()
        text = get(metrics_port, "/metrics")
        assert "dream_operator_leader 1.0" in text
        created = [line for line in text.splitlines() if line.startswith("dream_operator_pods_created_total")]
        assert created and float(created[0].split()[-1]) >= 2
        assert get(health_port, "/healthz")
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert process.returncode in (0, -15), output
