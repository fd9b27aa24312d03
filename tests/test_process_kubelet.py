"""The process-based kubelet of the end-to-end tests (e2e/kubelet.py): pods run as local
processes, with their environment, logs, exit codes, graceful deletion and injected faults."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dream_operator import proctree

from e2e.kubeapi import KubeAPI
from e2e.kubelet import ProcessCluster, resolve_service_hosts

NS = "default"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"

# The child leaves the process group, as torchrun's workers do: the kubelet must kill it anyway.
SLEEPER = """
import os, pathlib, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
pathlib.Path(sys.argv[1]).write_text(f"{os.getpid()} {child.pid}")
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def api() -> Iterator[KubeAPI]:
    with KubeAPI() as server:
        yield server


@pytest.fixture
def cluster(api: KubeAPI, tmp_path: Path) -> Iterator[ProcessCluster]:
    with ProcessCluster(api, nodes=["node-0", "node-1"], workdir=str(tmp_path), log_dir=tmp_path / "logs") as kubelets:
        yield kubelets


def pod(name: str, code: str, *args: str, node: str | None = None, grace: int | None = None,
        **container: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "python:3.11", "command": [sys.executable, "-c", textwrap.dedent(code)],
                        "args": list(args), **container}],
    }
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def phase(api: KubeAPI, name: str, wanted: str, timeout: float = 10.0) -> dict[str, Any]:
    found = api.store.wait_for("pods", NS, name, lambda p: p is not None and p["status"].get("phase") == wanted, timeout)
    assert found is not None
    return found


def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return result


def alive(pid: int) -> bool:
    """Running (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def pids(path: Path) -> list[int]:
    """The pids a SLEEPER wrote (itself, its child), once it has."""
    until(lambda: path.exists() and path.read_text())
    return [int(p) for p in path.read_text().split()]


def terminated(found: dict[str, Any]) -> dict[str, Any]:
    return found["status"]["containerStatuses"][0]["state"]["terminated"]


def test_service_host_names_resolve_to_the_host() -> None:
    assert resolve_service_hosts("a-0.a.ns.svc:29400") == "127.0.0.1:29400"
    assert resolve_service_hosts("tcp://a-0.a.ns.svc.cluster.local:1/x") == "tcp://127.0.0.1:1/x"
    assert resolve_service_hosts("a.ns.svc,b.ns.svc") == "127.0.0.1,127.0.0.1"
    for kept in ("ns.svc", "a.b.svc.example.com", "x.a-0.a.ns.svc", "example.com"):
        assert resolve_service_hosts(kept) == kept


def test_environment_secrets_fields_and_dns(api: KubeAPI, cluster: ProcessCluster, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST_ONLY_VARIABLE", "leak")
    api.store.create("secrets", {"metadata": {"name": "creds"}, "stringData": {"TOKEN": "s3cret", "USER": "me"}}, NS)
    manifest = pod("env", """
        import json, os, sys
        print(json.dumps({"env": dict(os.environ), "argv": sys.argv[1:], "cwd": os.getcwd()}))
        """, "--rdzv", "$(MASTER)", "b.default.svc.cluster.local", "$(HOME)",
        env=[{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
             {"name": "GREETING", "value": "hi-$(POD)-$(S_USER)"},
             {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "TOKEN"}}},
             {"name": "MASTER", "value": "env-0.env.default.svc:29400"},
             {"name": "OTHER", "value": "example.svc.com"}],
        envFrom=[{"secretRef": {"name": "creds"}, "prefix": "S_"}])
    manifest["spec"]["hostname"] = "env-0"
    api.store.create("pods", manifest, NS)
    found = phase(api, "env", "Succeeded")
    assert found["status"]["podIP"] == found["status"]["hostIP"] == "127.0.0.1"
    assert terminated(found)["exitCode"] == 0 and terminated(found)["reason"] == "Completed"
    seen = json.loads(api.store.read_log(NS, "env"))
    env = seen["env"]
    assert env["POD"] == "env" and env["GREETING"] == "hi-env-me" and env["HOSTNAME"] == "env-0"
    assert env["TOKEN"] == env["S_TOKEN"] == "s3cret" and env["S_USER"] == "me"
    assert env["MASTER"] == "127.0.0.1:29400" and env["OTHER"] == "example.svc.com"
    assert env["PATH"] == os.environ["PATH"] and "HOST_ONLY_VARIABLE" not in env
    assert set(env) - {"POD", "GREETING", "TOKEN", "MASTER", "OTHER", "S_TOKEN", "S_USER", "HOSTNAME", "LC_CTYPE",
                       proctree.CONTAINER_TAG} <= set(cluster.base_env)
    # $(VAR) in args sees the container's variables only (HOME comes from the node, not the pod spec)
    assert seen["argv"] == ["--rdzv", "127.0.0.1:29400", "127.0.0.1", "$(HOME)"]
    assert seen["cwd"] == str(tmp_path)
    lines = cluster.pod_log_lines(NS, "env")
    assert len(lines) == 1 and json.loads(lines[0][1]) == seen and abs(lines[0][0] - time.time()) < 60
    assert (tmp_path / "logs" / "default_env.log").read_text() == api.store.read_log(NS, "env")


def test_exit_codes_and_logs_through_kubectl(api: KubeAPI, cluster: ProcessCluster, tmp_path: Path) -> None:
    api.store.create("pods", pod("ok", "print('hello'); print('world')"), NS)
    api.store.create("pods", pod("bad", "import sys; print('oops', file=sys.stderr); sys.exit(3)"), NS)
    ok, bad = phase(api, "ok", "Succeeded"), phase(api, "bad", "Failed")
    assert terminated(ok)["exitCode"] == 0
    assert terminated(bad)["exitCode"] == 3 and terminated(bad)["reason"] == "Error"
    assert api.store.read_log(NS, "ok") == "hello\nworld\n" and api.store.read_log(NS, "bad") == "oops\n"
    config = api.write_kubeconfig(tmp_path / "kubeconfig")
    result = subprocess.run([KUBECTL, "--kubeconfig", str(config), "--cache-dir", str(tmp_path / "cache"), "logs", "ok"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\nworld\n"


def test_termination_message_reaches_the_status(api: KubeAPI, cluster: ProcessCluster) -> None:
    """The container writes to its terminationMessagePath (named in its env, as the operator's
    pods do); the exit status carries it, as a real kubelet's does."""
    code = "import os, pathlib; pathlib.Path(os.environ['FINAL']).write_text('step 120')"
    api.store.create("pods", pod("final", code, env=[{"name": "FINAL", "value": "/dev/termination-log"}]), NS)
    assert terminated(phase(api, "final", "Succeeded"))["message"] == "step 120"


def test_graceful_delete_sends_sigterm_and_waits_for_the_exit(api: KubeAPI, cluster: ProcessCluster, tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    api.store.create("pods", pod("graceful", """
        import pathlib, signal, sys, time
        def term(*_):
            time.sleep(0.5)  # the pod object must outlive this
            pathlib.Path(sys.argv[1]).write_text("SIGTERM")
            sys.exit(143)
        signal.signal(signal.SIGTERM, term)
        print("ready", flush=True)
        time.sleep(60)
        """, str(marker)), NS)
    phase(api, "graceful", "Running")
    until(lambda: "ready" in api.store.read_log(NS, "graceful"))
    api.store.delete("pods", NS, "graceful")
    time.sleep(0.2)
    lingering = api.store.get("pods", NS, "graceful")
    assert lingering["metadata"]["deletionTimestamp"] and not marker.exists()
    api.store.wait_for("pods", NS, "graceful", lambda p: p is None)
    assert marker.read_text() == "SIGTERM"


def test_grace_expiry_kills_the_process_group(api: KubeAPI, cluster: ProcessCluster, tmp_path: Path) -> None:
    api.store.create("pods", pod("stubborn", "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + SLEEPER,
                                 str(tmp_path / "pids"), grace=1), NS)
    phase(api, "stubborn", "Running")
    main, child = pids(tmp_path / "pids")
    started = time.monotonic()
    api.store.delete("pods", NS, "stubborn")
    api.store.wait_for("pods", NS, "stubborn", lambda p: p is None)
    assert 0.9 <= time.monotonic() - started < 5
    assert not alive(main) and not alive(child)


def test_kill_pod_is_a_crash(api: KubeAPI, cluster: ProcessCluster, tmp_path: Path) -> None:
    api.store.create("pods", pod("crash", SLEEPER, str(tmp_path / "pids")), NS)
    phase(api, "crash", "Running")
    main, child = pids(tmp_path / "pids")
    cluster.kill_pod(NS, "crash")
    found = phase(api, "crash", "Failed")
    assert terminated(found)["exitCode"] == 137
    assert not alive(main) and not alive(child)  # the container's processes die with its main one


def test_kill_node_leaves_the_pod_as_it_was_and_force_delete_cleans_up(api: KubeAPI, cluster: ProcessCluster,
                                                                       tmp_path: Path) -> None:
    api.store.create("pods", pod("dead", SLEEPER, str(tmp_path / "dead"), node="node-1"), NS)
    api.store.create("pods", pod("cut", SLEEPER, str(tmp_path / "cut"), node="node-0"), NS)
    phase(api, "dead", "Running")
    phase(api, "cut", "Running")
    dead, cut = pids(tmp_path / "dead"), pids(tmp_path / "cut")
    cluster.kill_node("node-1")
    cluster.set_node_ready("node-0", False)  # a partition: the processes go on
    node = api.store.get("nodes", None, "node-1")
    assert next(c for c in node["status"]["conditions"] if c["type"] == "Ready")["status"] == "Unknown"
    until(lambda: not any(alive(p) for p in dead))
    time.sleep(0.3)
    found = api.store.get("pods", NS, "dead")
    assert found["status"]["phase"] == "Running" and "running" in found["status"]["containerStatuses"][0]["state"]
    assert all(alive(p) for p in cut)
    # A graceful delete cannot finish on a NotReady node; the operator force-deletes.
    api.store.delete("pods", NS, "cut")
    time.sleep(0.3)
    assert api.store.get("pods", NS, "cut")["metadata"]["deletionTimestamp"] and all(alive(p) for p in cut)
    api.store.delete("pods", NS, "cut", grace_period_seconds=0)
    until(lambda: not any(alive(p) for p in cut))  # orphaned processes are killed
    cluster.set_node_ready("node-1", True)  # the node comes back and its kubelet reports what happened
    assert terminated(phase(api, "dead", "Failed"))["exitCode"] == 137


def test_missing_secret_is_a_create_container_config_error_until_it_exists(api: KubeAPI, cluster: ProcessCluster) -> None:
    api.store.create("pods", pod("nosecret", "import os; print(os.environ['TOKEN'])",
                                 env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "t"}}}]), NS)

    def waiting(p: dict[str, Any] | None) -> bool:
        statuses = (p or {}).get("status", {}).get("containerStatuses") or [{}]
        return "waiting" in (statuses[0].get("state") or {})

    found = api.store.wait_for("pods", NS, "nosecret", waiting)
    assert found is not None and found["status"]["phase"] == "Pending"
    assert found["status"]["containerStatuses"][0]["state"]["waiting"] == {
        "reason": "CreateContainerConfigError", "message": 'secret "later" not found'}
    events = api.store.list("events", NS)
    assert [(e["reason"], e["type"], e["involvedObject"]["name"]) for e in events] == [("Failed", "Warning", "nosecret")]
    api.store.create("secrets", {"metadata": {"name": "later"}, "stringData": {"t": "now"}}, NS)
    phase(api, "nosecret", "Succeeded")
    assert api.store.read_log(NS, "nosecret") == "now\n"


def test_restart_policy_on_failure_reruns_the_container(api: KubeAPI, cluster: ProcessCluster, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    manifest = pod("flaky", """
        import pathlib, sys
        path = pathlib.Path(sys.argv[1])
        runs = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(runs))
        print(f"run {runs}", flush=True)
        sys.exit(0 if runs == 2 else 1)
        """, str(counter))
    manifest["spec"]["restartPolicy"] = "OnFailure"
    api.store.create("pods", manifest, NS)
    found = phase(api, "flaky", "Succeeded")
    assert found["status"]["containerStatuses"][0]["restartCount"] == 1
    assert [line for _, line in cluster.pod_log_lines(NS, "flaky")] == ["run 1", "run 2"]


def _children() -> set[str]:
    return {p for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == os.getpid()}


def test_stop_leaves_no_process_behind(api: KubeAPI, tmp_path: Path) -> None:
    before = _children()  # other fixtures' servers (SeaweedFS, ...) may be children too
    kubelets = ProcessCluster(api, nodes=["node-0"], workdir=str(tmp_path), log_dir=tmp_path / "logs")
    api.store.create("pods", pod("left", SLEEPER, str(tmp_path / "pids")), NS)
    phase(api, "left", "Running")
    started = pids(tmp_path / "pids")
    kubelets.stop()
    assert not any(alive(p) for p in started)
    assert _children() - before == set()  # not even zombies
    assert api.store.get("pods", NS, "left")["status"]["phase"] == "Running"  # a stopped kubelet reports nothing


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])
