"""kubectl 1.32 against the Kubernetes API emulator: apply (create, patch, server-side), get
(tables, short names, label selectors, JSON), delete (waiting for graceful pod termination),
and the server's validation errors as kubectl prints them."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from e2e.kubeapi import KubeAPI, SimCluster

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
PROJECT_CRD = Path(__file__).resolve().parents[1] / "crds" / "dreamtrainer.dev_dreamtrainjobs.yaml"

pytestmark = pytest.mark.skipif(not Path(KUBECTL).exists(), reason="kubectl is not installed")

CRD_YAML = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.dev
spec:
  group: example.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Phase, type: string, jsonPath: .status.phase}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            x-kubernetes-validations:
            - {rule: "!has(self.min) || self.min <= self.size", message: "min must be <= size"}
            properties:
              size: {type: integer, minimum: 1}
              min: {type: integer}
              color: {type: string, default: red}
          status:
            type: object
            properties:
              phase: {type: string}
"""

Kubectl = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def api():
    with KubeAPI() as server:
        yield server


@pytest.fixture
def kubectl(api: KubeAPI, tmp_path: Path) -> Kubectl:
    config = api.write_kubeconfig(tmp_path / "kubeconfig")

    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        command = [KUBECTL, "--kubeconfig", str(config), "--cache-dir", str(tmp_path / "cache"), *args]
        result = subprocess.run(command, check=False, input=stdin, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    return run


def widget_yaml(name: str, **spec: object) -> str:
    return yaml.safe_dump({"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec})


def test_kubectl_custom_resource_lifecycle(api: KubeAPI, kubectl: Kubectl) -> None:
    assert "created" in kubectl("apply", "-f", "-", stdin=CRD_YAML).stdout
    assert kubectl("apply", "-f", "-", stdin=widget_yaml("w1", size=3)).stdout.strip() == "widget.example.dev/w1 created"
    assert kubectl("apply", "-f", "-", stdin=widget_yaml("w1", size=5)).stdout.strip() == "widget.example.dev/w1 configured"
    stored = api.store.get("widgets", "default", "w1")
    assert stored["spec"] == {"size": 5, "color": "red"} and stored["metadata"]["generation"] == 2
    assert kubectl("apply", "-f", "-", stdin=widget_yaml("w1", size=5)).stdout.strip() == "widget.example.dev/w1 unchanged"
    api.store.patch("widgets", "default", "w1", {"status": {"phase": "Running"}}, subresource="status")
    table = kubectl("get", "widgets").stdout.splitlines()
    assert table[0].split() == ["NAME", "SIZE", "PHASE"] and table[1].split() == ["w1", "5", "Running"]
    listed = json.loads(kubectl("get", "wd", "-o", "json").stdout)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["w1"]
    assert listed["items"][0]["status"] == {"phase": "Running"}
    server_side = kubectl("apply", "--server-side", "-f", "-", stdin=widget_yaml("w2", size=2))
    assert "serverside-applied" in server_side.stdout
    assert kubectl("get", "widget", "w2", "-o", "jsonpath={.spec.size}").stdout == "2"
    assert kubectl("delete", "widgets", "w1").stdout.strip() == 'widget.example.dev "w1" deleted'
    assert api.store.try_get("widgets", "default", "w1") is None
    missing = kubectl("get", "widgets", "w1", check=False)
    assert missing.returncode != 0 and 'widgets.example.dev "w1" not found' in missing.stderr


def test_kubectl_shows_server_validation_errors(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin=CRD_YAML)
    bad = kubectl("apply", "-f", "-", stdin=widget_yaml("bad", size=0), check=False)
    assert bad.returncode != 0
    assert 'The Widget "bad" is invalid: spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1' in bad.stderr
    rule = kubectl("apply", "-f", "-", stdin=widget_yaml("rule", size=2, min=3), check=False)
    assert 'spec: Invalid value: "object": min must be <= size' in rule.stderr
    unknown = kubectl("apply", "-f", "-", stdin=widget_yaml("unknown", size=2, foo=1), check=False)
    assert unknown.returncode != 0 and 'strict decoding error: unknown field "spec.foo"' in unknown.stderr
    warned = kubectl("apply", "--validate=warn", "-f", "-", stdin=widget_yaml("warned", size=2, foo=1))
    assert 'unknown field "spec.foo"' in warned.stderr  # kubectl prints the server's Warning header
    labels = kubectl("apply", "-f", "-", check=False,
                     stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, labels: {version: 1}}\n")
    assert labels.returncode != 0  # numbers are not label values (kubectl or the server says so)


def test_kubectl_pods_selectors_and_graceful_delete(api: KubeAPI, kubectl: Kubectl) -> None:
    with SimCluster(api, nodes=["node-0", "node-1"], termination_delay=0.2):
        pods = "\n---\n".join(
            yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
                            "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}})
            for name, app in (("x-1", "x"), ("x-2", "x"), ("y-1", "why")))  # (a bare y is a YAML 1.1 bool)
        kubectl("apply", "-f", "-", stdin=pods)
        for name in ("x-1", "x-2", "y-1"):
            api.store.wait_for("pods", "default", name, lambda p: p["status"]["phase"] == "Running")
        assert kubectl("get", "pods", "-l", "app=x", "-o", "name").stdout.split() == ["pod/x-1", "pod/x-2"]
        assert kubectl("get", "pods", "-l", "app in (why)", "-o", "name").stdout.split() == ["pod/y-1"]
        wide = kubectl("get", "pods", "-l", "app=x", "-o", "wide").stdout.splitlines()
        assert wide[0].split()[:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        assert all(" Running " in line and "127.0.0." in line for line in wide[1:])
        on_node = kubectl("get", "pods", "--field-selector", "spec.nodeName=node-0", "-o", "name").stdout.split()
        assert on_node and all(api.store.get("pods", "default", p.split("/")[1])["spec"]["nodeName"] == "node-0" for p in on_node)
        changed = yaml.safe_load(pods.split("\n---\n")[1])
        changed["metadata"]["labels"]["extra"] = "yes"
        changed["spec"]["containers"][0]["image"] = "busybox:1.37"  # images are the mutable part of a pod
        assert kubectl("apply", "-f", "-", stdin=yaml.safe_dump(changed)).stdout.strip() == "pod/x-2 configured"
        assert api.store.get("pods", "default", "x-2")["spec"]["containers"][0]["image"] == "busybox:1.37"
        changed["spec"]["containers"][0]["command"] = ["sh"]
        refused = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(changed), check=False)
        assert refused.returncode != 0 and "pod updates may not change fields" in refused.stderr
        deleted = kubectl("delete", "pod", "x-1")  # waits until the kubelet has stopped it
        assert deleted.stdout.strip() == 'pod "x-1" deleted' and api.store.try_get("pods", "default", "x-1") is None
        assert "No resources found" in kubectl("get", "pods", "-l", "app=none").stderr


def test_kubectl_applies_the_project_crd(api: KubeAPI, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(PROJECT_CRD))
    job = {"apiVersion": "dreamtrainer.dev/v1alpha1", "kind": "DreamTrainJob", "metadata": {"name": "job-1"},
           "spec": {"image": "trainer:latest", "command": ["train.py"], "nodes": {"count": 2}}}
    assert "created" in kubectl("apply", "-f", "-", stdin=yaml.safe_dump(job)).stdout
    stored = api.store.get("dtj", "default", "job-1")
    assert stored["spec"]["nprocPerNode"] == 1  # defaults from the generated schema
    assert kubectl("get", "dtj", "job-1", "-o", "jsonpath={.spec.nodes.count}").stdout == "2"
    both = json.loads(json.dumps(job))
    both["metadata"]["name"] = "job-2"
    both["spec"]["nodes"] = {"count": 2, "min": 1, "max": 2}
    rejected = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(both), check=False)
    assert rejected.returncode != 0 and "set either nodes.count, or nodes.min and nodes.max" in rejected.stderr
    long_name = json.loads(json.dumps(job))
    long_name["metadata"]["name"] = "j" * 57
    rejected = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(long_name), check=False)
    assert rejected.returncode != 0 and "metadata.name must be at most 56 characters" in rejected.stderr
    kubectl("delete", "dreamtrainjobs", "job-1")
    assert api.store.try_get("dtj", "default", "job-1") is None


def test_kubectl_typed_create_commands_and_namespaces(api: KubeAPI, kubectl: Kubectl) -> None:
    """kubectl create <kind> posts protobuf; namespaces tear down their content on delete."""
    kubectl("create", "namespace", "team")
    kubectl("-n", "team", "create", "configmap", "cm", "--from-literal=a=b")
    kubectl("-n", "team", "create", "secret", "generic", "creds", "--from-literal=key=s3cret")
    kubectl("-n", "team", "create", "serviceaccount", "robot")
    assert api.store.get("configmaps", "team", "cm")["data"] == {"a": "b"}
    assert api.store.get("secrets", "team", "creds")["data"] == {"key": "czNjcmV0"}
    assert api.store.get("serviceaccounts", "team", "robot")
    kubectl("delete", "namespace", "team")
    assert api.store.try_get("namespaces", None, "team") is None
    assert api.store.list("configmaps", "team") == []
