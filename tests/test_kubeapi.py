"""The Kubernetes API emulator (e2e/kubeapi): store semantics, schema validation, the simulated
cluster, the HTTP API through the official client, and a kopf operator running against it."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from typing import Any

import pytest
import requests

from e2e.kubeapi import APIError, KubeAPI, SimCluster, Store
from e2e.kubeapi.schema import apply_defaults, prune, validate

CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.dev"},
    "spec": {
        "group": "example.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [{
            "name": "v1",
            "served": True,
            "storage": True,
            "subresources": {"status": {}},
            "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 10},
                            "mode": {"type": "string", "enum": ["fast", "slow"]},
                            "color": {"type": "string", "default": "red"},
                            "name": {"type": "string", "minLength": 2, "maxLength": 8, "pattern": "^[a-z]+$"},
                            "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "port": {"x-kubernetes-int-or-string": True},
                            "nodes": {
                                "type": "object",
                                "properties": {
                                    "min": {"type": "integer", "minimum": 1},
                                    "max": {"type": "integer", "minimum": 1},
                                    "policy": {"type": "object", "default": {}, "properties": {
                                        "retries": {"type": "integer", "default": 3}}},
                                },
                                "x-kubernetes-validations": [
                                    {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
                                     "message": "min must be <= max"}],
                            },
                        },
                    },
                    "status": {"type": "object", "properties": {"phase": {"type": "string"}, "count": {"type": "integer"}}},
                },
            }},
        }],
    },
}


def widget(name: str = "w1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": 3, **spec}}


def pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}], **spec}}


@pytest.fixture
def store() -> Store:
    s = Store()
    s.create("customresourcedefinitions", CRD)
    return s


def invalid(exc: pytest.ExceptionInfo[APIError]) -> list[tuple[str, str]]:
    assert exc.value.code == 422, exc.value
    return [(c["field"], c["reason"]) for c in exc.value.details["causes"]]


# ---------------------------------------------------------------------------------------------
# store: identity, versions, conflicts


def test_create_sets_server_fields_and_rejects_duplicates(store: Store) -> None:
    first = store.create("widgets", widget("a"), "default")
    second = store.create("widgets", widget("b"), "default")
    meta = first["metadata"]
    uuid.UUID(meta["uid"])
    assert meta["generation"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert first["spec"]["color"] == "red"  # schema default applied
    with pytest.raises(APIError) as exc:
        store.create("widgets", widget("a"), "default")
    assert exc.value.code == 409 and exc.value.reason == "AlreadyExists"
    assert exc.value.message == 'widgets.example.dev "a" already exists'
    generated = store.create("widgets", {**widget(""), "metadata": {"generateName": "job-"}}, "default")
    assert re.fullmatch(r"job-[a-z0-9]{5}", generated["metadata"]["name"])
    with pytest.raises(APIError) as missing:
        store.create("widgets", widget("x"), "nope")
    assert missing.value.code == 404 and missing.value.message == 'namespaces "nope" not found'


def test_update_conflicts_generation_and_noop(store: Store) -> None:
    obj = store.create("widgets", widget(), "default")
    stale = json.loads(json.dumps(obj))
    obj["metadata"]["labels"] = {"a": "b"}
    relabeled = store.update("widgets", obj, "default")
    assert relabeled["metadata"]["generation"] == 1  # metadata changes do not bump generation
    with pytest.raises(APIError) as exc:
        store.update("widgets", stale, "default")
    assert exc.value.code == 409 and exc.value.reason == "Conflict"
    assert "the object has been modified" in exc.value.message
    relabeled["spec"]["size"] = 4
    bumped = store.update("widgets", relabeled, "default")
    assert bumped["metadata"]["generation"] == 2
    again = store.update("widgets", bumped, "default")
    assert again["metadata"]["resourceVersion"] == bumped["metadata"]["resourceVersion"]  # no-op: no write
    no_rv = dict(bumped, metadata={k: v for k, v in bumped["metadata"].items() if k != "resourceVersion"})
    with pytest.raises(APIError) as exc:
        store.update("widgets", no_rv, "default")
    assert invalid(exc) == [("metadata.resourceVersion", "FieldValueInvalid")]


def test_status_subresource_is_separate(store: Store) -> None:
    created = store.create("widgets", {**widget(), "status": {"phase": "Set"}}, "default")
    assert "status" not in created  # create cannot set status
    main = store.patch("widgets", "default", "w1", {"spec": {"size": 5}, "status": {"phase": "Ignored"}})
    assert "status" not in main and main["metadata"]["generation"] == 2
    status = store.patch("widgets", "default", "w1", {"spec": {"size": 9}, "status": {"phase": "Running"}},
                         subresource="status")
    assert status["status"] == {"phase": "Running"}
    assert status["spec"]["size"] == 5 and status["metadata"]["generation"] == 2
    full = store.get("widgets", "default", "w1")
    full["status"]["phase"] = "Done"
    full["spec"]["size"] = 7
    put = store.update("widgets", full, "default", subresource="status")
    assert put["status"]["phase"] == "Done" and put["spec"]["size"] == 5


# ---------------------------------------------------------------------------------------------
# store: selectors


@pytest.mark.parametrize(("selector", "names"), [
    ("app=web", ["a", "b"]),
    ("app==web,tier=front", ["a"]),
    ("app!=web", ["c", "d"]),
    ("app in (web, db)", ["a", "b", "c"]),
    ("app notin (web)", ["c", "d"]),
    ("tier", ["a", "c"]),
    ("!tier", ["b", "d"]),
    ("", ["a", "b", "c", "d"]),
])
def test_label_selectors(store: Store, selector: str, names: list[str]) -> None:
    for name, labels in [("a", {"app": "web", "tier": "front"}), ("b", {"app": "web"}), ("c", {"app": "db", "tier": "x"}), ("d", {})]:
        store.create("configmaps", {"metadata": {"name": name, "labels": labels}}, "default")
    assert [o["metadata"]["name"] for o in store.list("configmaps", "default", label_selector=selector)] == names


def test_field_selectors_and_bad_selectors(store: Store) -> None:
    store.create("pods", pod("bound", nodeName="node-1"), "default")
    store.create("pods", pod("pending"), "default")
    store.create("namespaces", {"metadata": {"name": "other"}})
    store.create("pods", pod("elsewhere"), "other")
    names = lambda **kw: [p["metadata"]["name"] for p in store.list("pods", **kw)]
    assert names(field_selector="spec.nodeName=node-1") == ["bound"]
    assert names(namespace="default", field_selector="spec.nodeName=") == ["pending"]
    assert names(field_selector="status.phase=Pending,metadata.namespace!=default") == ["elsewhere"]
    assert names(field_selector="metadata.name==pending") == ["pending"]
    for kwargs in ({"label_selector": "app in (a"}, {"label_selector": "a=b=c"}, {"field_selector": "spec.unknown=1"}):
        with pytest.raises(APIError) as exc:
            store.list("pods", **kwargs)
        assert exc.value.code == 400
    with pytest.raises(APIError):
        store.list("widgets", field_selector="spec.size=3")  # CRs: only metadata fields


# ---------------------------------------------------------------------------------------------
# store: deletion, finalizers, garbage collection


def owner_ref(obj: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], **extra}


def test_finalizers_hold_an_object_until_removed(store: Store) -> None:
    store.create("widgets", {**widget(), "metadata": {"name": "w1", "finalizers": ["example.dev/hold"]}}, "default")
    deleting = store.delete("widgets", "default", "w1")
    assert deleting["metadata"]["deletionTimestamp"] and store.try_get("widgets", "default", "w1") is not None
    with pytest.raises(APIError) as exc:
        store.patch("widgets", "default", "w1", {"metadata": {"finalizers": ["example.dev/hold", "example.dev/new"]}})
    assert invalid(exc) == [("metadata.finalizers", "FieldValueForbidden")]
    store.patch("widgets", "default", "w1", {"metadata": {"finalizers": None}})
    assert store.try_get("widgets", "default", "w1") is None


def test_graceful_pod_deletion(store: Store) -> None:
    store.create("pods", pod("running", nodeName="node-0", terminationGracePeriodSeconds=20), "default")
    store.create("pods", pod("unscheduled"), "default")
    terminating = store.delete("pods", "default", "running")
    assert terminating["metadata"]["deletionGracePeriodSeconds"] == 20
    assert store.get("pods", "default", "running")["metadata"]["deletionTimestamp"]
    store.delete("pods", "default", "running")  # deleting again changes nothing
    assert store.try_get("pods", "default", "running") is not None
    store.delete("pods", "default", "running", grace_period_seconds=0)  # force
    assert store.try_get("pods", "default", "running") is None
    store.delete("pods", "default", "unscheduled")  # nothing to stop: gone at once
    assert store.try_get("pods", "default", "unscheduled") is None


def test_garbage_collection_cascades(store: Store) -> None:
    owner = store.create("widgets", widget("owner"), "default")
    other = store.create("widgets", widget("other"), "default")
    cm = store.create("configmaps", {"metadata": {"name": "cm", "ownerReferences": [owner_ref(owner, controller=True)]}}, "default")
    store.create("configmaps", {"metadata": {"name": "grandchild", "ownerReferences": [owner_ref(cm)]}}, "default")
    store.create("pods", {**pod("p", nodeName="node-0"), "metadata": {"name": "p", "ownerReferences": [owner_ref(owner)]}}, "default")
    store.create("configmaps", {"metadata": {"name": "shared", "ownerReferences": [owner_ref(owner), owner_ref(other)]}}, "default")
    store.delete("widgets", "default", "owner")
    assert store.try_get("configmaps", "default", "cm") is None
    assert store.try_get("configmaps", "default", "grandchild") is None
    assert store.get("pods", "default", "p")["metadata"]["deletionTimestamp"]  # graceful, still terminating
    shared = store.get("configmaps", "default", "shared")
    assert [r["name"] for r in shared["metadata"]["ownerReferences"]] == ["other"]


def test_orphan_and_foreground_propagation(store: Store) -> None:
    owner = store.create("widgets", widget("o1"), "default")
    store.create("configmaps", {"metadata": {"name": "kept", "ownerReferences": [owner_ref(owner)]}}, "default")
    store.delete("widgets", "default", "o1", propagation_policy="Orphan")
    assert "ownerReferences" not in store.get("configmaps", "default", "kept")["metadata"]
    owner = store.create("widgets", widget("o2"), "default")
    dependent = {"metadata": {"name": "held", "finalizers": ["example.dev/x"], "ownerReferences": [owner_ref(owner)]}}
    store.create("configmaps", dependent, "default")
    store.delete("widgets", "default", "o2", propagation_policy="Foreground")
    waiting = store.get("widgets", "default", "o2")
    assert waiting["metadata"]["finalizers"] == ["foregroundDeletion"] and waiting["metadata"]["deletionTimestamp"]
    assert store.get("configmaps", "default", "held")["metadata"]["deletionTimestamp"]
    store.patch("configmaps", "default", "held", {"metadata": {"finalizers": []}})
    assert store.try_get("configmaps", "default", "held") is None
    assert store.try_get("widgets", "default", "o2") is None  # the last dependent released the owner


def test_namespace_deletion_empties_it(store: Store) -> None:
    store.create("namespaces", {"metadata": {"name": "team"}})
    store.create("widgets", widget(), "team")
    store.create("pods", pod("p", nodeName="node-0"), "team")
    store.delete("namespaces", None, "team")
    assert store.get("namespaces", None, "team")["status"]["phase"] == "Terminating"  # waits for the pod
    assert store.try_get("widgets", "team", "w1") is None
    with pytest.raises(APIError) as exc:
        store.create("configmaps", {"metadata": {"name": "late"}}, "team")
    assert exc.value.code == 403
    store.delete("pods", "team", "p", grace_period_seconds=0)
    assert store.try_get("namespaces", None, "team") is None


def test_pod_rules(store: Store) -> None:
    created = store.create("pods", pod("p"), "default")
    assert created["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
    assert created["spec"]["serviceAccountName"] == "default" and created["spec"]["restartPolicy"] == "Always"
    with pytest.raises(APIError) as exc:
        store.patch("pods", "default", "p", {"spec": {"restartPolicy": "Never"}})
    assert invalid(exc) == [("spec", "FieldValueForbidden")]
    new_image = store.patch("pods", "default", "p", {"spec": {"containers": [{"name": "main", "image": "busybox:2"}]}},
                            patch_type="strategic")
    assert new_image["spec"]["containers"][0]["image"] == "busybox:2" and new_image["metadata"]["generation"] == 2
    with pytest.raises(APIError) as exc:
        store.create("pods", pod("q", serviceAccountName="missing"), "default")
    assert exc.value.code == 403 and 'serviceaccount "missing" not found' in exc.value.message
    with pytest.raises(APIError) as exc:
        store.create("pods", {"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "c"}]}}, "default")
    assert invalid(exc) == [("metadata.name", "FieldValueInvalid"), ("spec.containers[0].image", "FieldValueRequired")]


# ---------------------------------------------------------------------------------------------
# store: patches


def test_patch_flavours(store: Store) -> None:
    store.create("pods", pod("p", labels={"a": "1"}), "default")
    merged = store.patch("pods", "default", "p", {"metadata": {"labels": {"a": None, "b": "2"}}})
    assert merged["metadata"]["labels"] == {"b": "2"}
    jsonp = store.patch("pods", "default", "p", [{"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}},
                                                  {"op": "test", "path": "/metadata/name", "value": "p"}], "json")
    assert jsonp["metadata"]["annotations"] == {"x": "y"}
    with pytest.raises(APIError):
        store.patch("pods", "default", "p", [{"op": "remove", "path": "/metadata/nothing"}], "json")
    smp = store.patch("pods", "default", "p", {"metadata": {"finalizers": ["example.dev/a"]}}, "strategic")
    smp = store.patch("pods", "default", "p", {"metadata": {"finalizers": ["example.dev/b"]}}, "strategic")
    assert smp["metadata"]["finalizers"] == ["example.dev/a", "example.dev/b"]  # merged, not replaced
    status = store.patch("pods", "default", "p", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
                         "strategic", subresource="status")
    status = store.patch("pods", "default", "p", {"status": {"conditions": [{"type": "Ready", "status": "True"},
                                                                              {"type": "Initialized", "status": "True"}]}},
                         "strategic", subresource="status")
    assert [(c["type"], c["status"]) for c in status["status"]["conditions"]] == [("Ready", "True"), ("Initialized", "True")]
    with pytest.raises(APIError) as exc:
        store.patch("widgets", "default", "nope", {}, "apply")
    assert exc.value.code == 422  # apply needs a fieldManager
    applied = store.patch("widgets", "default", "w9", widget("w9"), "apply", field_manager="test")
    assert applied["spec"]["size"] == 3
    with pytest.raises(APIError) as exc:
        store.patch("widgets", "default", "w9", {"spec": {"size": 4}}, "strategic")
    assert exc.value.code == 415  # custom resources do not support strategic merge patch


# ---------------------------------------------------------------------------------------------
# schema validation


def test_schema_errors_read_like_the_real_server(store: Store) -> None:
    with pytest.raises(APIError) as exc:
        store.create("widgets", widget(size=0), "default")
    assert exc.value.message == ('Widget.example.dev "w1" is invalid: spec.size: Invalid value: 0: '
                                 'spec.size in body should be greater than or equal to 1')
    assert exc.value.details["causes"] == [{"reason": "FieldValueInvalid", "field": "spec.size",
                                            "message": "Invalid value: 0: spec.size in body should be greater than or equal to 1"}]
    bad = widget()
    bad["spec"] = {"mode": "medium", "name": "A", "tags": ["a", "b", "c"], "labels": {"k": 1}, "nodes": {"min": 0}}
    with pytest.raises(APIError) as exc:
        store.create("widgets", bad, "default")
    assert sorted(invalid(exc)) == sorted([
        ("spec.size", "FieldValueRequired"),
        ("spec.mode", "FieldValueNotSupported"),
        ("spec.name", "FieldValueInvalid"),  # minLength
        ("spec.name", "FieldValueInvalid"),  # pattern
        ("spec.tags", "FieldValueTooMany"),
        ("spec.labels[k]", "FieldValueTypeInvalid"),
        ("spec.nodes.min", "FieldValueInvalid"),
        ("<nil>", "FieldValueInvalid"),  # CEL not run on an ill-typed object, like the real server
    ])
    assert 'spec.mode: Unsupported value: "medium": supported values: "fast", "slow"' in exc.value.message
    assert exc.value.message.startswith('Widget.example.dev "w1" is invalid: [')


def test_cel_rules(store: Store) -> None:
    with pytest.raises(APIError) as exc:
        store.create("widgets", widget(nodes={"min": 4, "max": 2}), "default")
    assert exc.value.message.endswith('spec.nodes: Invalid value: "object": min must be <= max')
    ok = store.create("widgets", widget(nodes={"min": 2, "max": 4}), "default")
    assert ok["spec"]["nodes"]["policy"] == {"retries": 3}  # nested defaults
    assert store.create("widgets", widget("w2", nodes={"max": 1}), "default")  # has() guards absent fields


def test_unknown_fields_strict_warn_ignore(store: Store) -> None:
    body = widget(foo=1, extra={"anything": {"goes": True}}, port="http")
    with pytest.raises(APIError) as exc:
        store.create("widgets", body, "default", field_validation="Strict")
    assert exc.value.code == 400
    assert exc.value.message.endswith('strict decoding error: unknown field "spec.foo"')
    warnings: list[str] = []
    created = store.create("widgets", body, "default", warnings=warnings)
    assert warnings == ['unknown field "spec.foo"'] and "foo" not in created["spec"]
    assert created["spec"]["extra"] == {"anything": {"goes": True}} and created["spec"]["port"] == "http"
    warnings.clear()
    store.create("widgets", {**body, "metadata": {"name": "w2"}}, "default", field_validation="Ignore", warnings=warnings)
    assert warnings == []


def test_schema_functions_directly() -> None:
    schema = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    obj = {"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "x", "bogus": 1},
           "spec": {"size": 2, "nodes": {"min": 1, "max": None}, "tags": [1]}, "junk": True}
    assert sorted(prune(schema, obj)) == ["junk", "metadata.bogus"]
    assert obj["spec"]["nodes"] == {"min": 1}  # non-nullable null dropped
    apply_defaults(schema, obj)
    assert obj["spec"]["color"] == "red"
    errors = validate(schema, obj)
    assert [str(e) for e in errors] == [
        'spec.tags[0]: Invalid value: "integer": spec.tags[0] in body must be of type string: "integer"',
        ('<nil>: Invalid value: "null": some validation rules were not checked because the object was invalid; '
         'correct the existing errors to complete validation'),
    ]
    old = json.loads(json.dumps(obj))
    assert [e.field for e in validate(schema, obj, old=old)] == []  # ratcheting: unchanged invalid values pass


def test_crd_validation(store: Store) -> None:
    bad = json.loads(json.dumps(CRD))
    bad["metadata"]["name"] = "gadgets.example.dev"
    bad["spec"]["names"].update(plural="gadgets", kind="Gadget", shortNames=[])
    spec_schema = bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["x-kubernetes-validations"] = [{"rule": "self.size <="}]
    spec_schema["properties"]["untyped"] = {"description": "no type"}
    with pytest.raises(APIError) as exc:
        store.create("crds", bad)
    fields = [f for f, _ in invalid(exc)]
    prefix = "spec.versions[0].schema.openAPIV3Schema.properties[spec]"
    assert fields == [f"{prefix}.x-kubernetes-validations[0].rule", f"{prefix}.properties[untyped].type"]
    with pytest.raises(APIError):
        store.get("gadgets", "default", "x")  # nothing was registered


def test_crd_lifecycle_registers_and_removes_the_resource(store: Store) -> None:
    crd = store.get("crds", None, "widgets.example.dev")
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
    assert store.resource("wd").key == store.resource("Widget").key == "widgets.example.dev"
    store.create("widgets", widget(), "default")
    store.delete("crds", None, "widgets.example.dev")
    with pytest.raises(APIError):
        store.resource("widgets")


def test_multiple_versions_share_storage(store: Store) -> None:
    crd = json.loads(json.dumps(CRD))
    crd["metadata"]["name"] = "gadgets.example.dev"
    crd["spec"]["names"] = {"plural": "gadgets", "kind": "Gadget"}
    v1 = crd["spec"]["versions"][0]
    beta = json.loads(json.dumps(v1))
    beta.update(name="v1beta1", storage=False)
    beta["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["size"]["maximum"] = 100
    crd["spec"]["versions"] = [beta, v1]
    store.create("crds", crd)
    created = store.create("gadgets", {"apiVersion": "example.dev/v1beta1", "kind": "Gadget", "metadata": {"name": "g"},
                                       "spec": {"size": 50}}, "default")
    assert created["apiVersion"] == "example.dev/v1beta1"  # each version's schema validates its requests
    assert store.get("gadgets", "default", "g")["apiVersion"] == "example.dev/v1"  # stored as v1
    with pytest.raises(APIError):
        store.create("gadgets", {"apiVersion": "example.dev/v1", "kind": "Gadget", "metadata": {"name": "h"},
                                 "spec": {"size": 50}}, "default")
    assert store.get("gadgets", "default", "g", version="v1beta1")["apiVersion"] == "example.dev/v1beta1"


def test_watch_log_replay_and_expiry() -> None:
    small = Store(history=5)
    start = int(small.resource_version)
    for index in range(3):
        small.create("configmaps", {"metadata": {"name": f"c{index}"}}, "default")
    assert [e.object["metadata"]["name"] for e in small.events_since(start)] == ["c0", "c1", "c2"]
    for index in range(3, 10):
        small.create("configmaps", {"metadata": {"name": f"c{index}"}}, "default")
    with pytest.raises(APIError) as exc:
        small.events_since(start)
    assert exc.value.code == 410
    assert len(small.events_since(int(small.resource_version) - 2)) == 2


def test_store_is_thread_safe() -> None:
    store = Store()

    def writer(prefix: str) -> None:
        for i in range(50):
            store.create("configmaps", {"metadata": {"name": f"{prefix}-{i}"}}, "default")
            store.patch("configmaps", "default", f"{prefix}-{i}", {"data": {"k": str(i)}})

    threads = [threading.Thread(target=writer, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = [int(o["metadata"]["resourceVersion"]) for o in store.list("configmaps")]
    assert len(versions) == 200 and len(set(versions)) == 200


# ---------------------------------------------------------------------------------------------
# simulated cluster


def test_scheduler_and_kubelet(store: Store) -> None:
    cluster = SimCluster(store, nodes=["node-0", "node-1"], auto_run=False)
    cluster.add_node("gpu-0", labels={"accelerator": "h100"}, capacity={"nvidia.com/gpu": "1", "pods": "10"},
                     taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}])
    store.create("pods", pod("a"), "default")
    store.create("pods", pod("b"), "default")
    gpu = {"name": "main", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    tolerate = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    for name in ("g1", "g2"):
        store.create("pods", pod(name, nodeSelector={"accelerator": "h100"}, containers=[gpu], tolerations=tolerate), "default")
    store.create("pods", pod("nowhere", nodeSelector={"zone": "mars"}), "default")
    cluster.step()
    cluster.step()
    got = {p["metadata"]["name"]: p for p in store.list("pods")}
    assert {got["a"]["spec"]["nodeName"], got["b"]["spec"]["nodeName"]} == {"node-0", "node-1"}  # round robin
    assert got["a"]["status"]["phase"] == "Running" and got["a"]["status"]["podIP"].startswith("127.0.0.")
    assert got["a"]["status"]["containerStatuses"][0]["state"]["running"]
    placed = [n for n in ("g1", "g2") if got[n]["spec"].get("nodeName") == "gpu-0"]
    assert len(placed) == 1  # one GPU, one pod
    waiting = got[{"g1", "g2"}.difference(placed).pop()]
    assert waiting["status"]["conditions"][0]["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in waiting["status"]["conditions"][0]["message"]
    assert "didn't match Pod's node affinity/selector" in got["nowhere"]["status"]["conditions"][0]["message"]
    cluster.stop()


def test_container_outcomes_follow_restart_policy(store: Store) -> None:
    cluster = SimCluster(store, nodes=["node-0"], auto_run=False)
    for name, policy in (("never", "Never"), ("always", "Always"), ("done", "OnFailure"), ("evicted", "Always")):
        store.create("pods", pod(name, restartPolicy=policy), "default")
    cluster.step()
    cluster.step()
    failed = cluster.fail_pod("default", "never", exit_code=3, reason="Error")
    assert failed["status"]["phase"] == "Failed"
    assert failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    restarted = cluster.fail_pod("default", "always", exit_code=1)
    assert restarted["status"]["phase"] == "Running" and restarted["status"]["containerStatuses"][0]["restartCount"] == 1
    assert restarted["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 1
    assert cluster.succeed_pod("default", "done")["status"]["phase"] == "Succeeded"
    evicted = cluster.evict_pod("default", "evicted")
    assert (evicted["status"]["phase"], evicted["status"]["reason"]) == ("Failed", "Evicted")
    store.delete("pods", "default", "never")  # finished pods have nothing to stop
    assert store.try_get("pods", "default", "never") is None
    cluster.stop()


def test_dead_node_leaves_pods_terminating_until_forced(store: Store) -> None:
    with SimCluster(store, nodes=["node-0", "node-1"], termination_delay=0.05) as cluster:
        store.create("pods", pod("p0", nodeName="node-0"), "default")
        store.create("pods", pod("p1", nodeName="node-1"), "default")
        for name in ("p0", "p1"):
            store.wait_for("pods", "default", name, lambda p: p["status"]["phase"] == "Running", timeout=5)
        cluster.set_node_ready("node-0", False)
        node = store.get("nodes", None, "node-0")
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("Unknown", "NodeStatusUnknown")
        assert {t["effect"] for t in node["spec"]["taints"]} == {"NoSchedule", "NoExecute"}
        marked = store.get("pods", "default", "p0")["status"]["conditions"]
        assert next(c for c in marked if c["type"] == "Ready")["status"] == "False"  # the node controller's doing
        store.delete("pods", "default", "p0")
        store.delete("pods", "default", "p1")
        store.wait_for("pods", "default", "p1", lambda p: p is None, timeout=5)  # a live kubelet finishes it
        time.sleep(0.3)
        assert store.get("pods", "default", "p0")["metadata"]["deletionTimestamp"]  # nobody finishes this one
        store.create("pods", pod("new"), "default")
        assert store.wait_for("pods", "default", "new", lambda p: p["status"]["phase"] == "Running")["spec"]["nodeName"] == "node-1"
        store.delete("pods", "default", "p0", grace_period_seconds=0)
        assert store.try_get("pods", "default", "p0") is None
        store.create("pods", pod("orphan", nodeName="node-1"), "default")
        cluster.delete_node("node-1")
        store.wait_for("pods", "default", "orphan", lambda p: p is None, timeout=5)  # pod GC


def test_taint_eviction_after_a_timeout(store: Store) -> None:
    with SimCluster(store, nodes=["node-0"], eviction_timeout=0.1) as cluster:
        store.create("pods", pod("p", nodeName="node-0"), "default")
        store.wait_for("pods", "default", "p", lambda p: p["status"]["phase"] == "Running")
        cluster.set_node_ready("node-0", False)
        evicted = store.wait_for("pods", "default", "p", lambda p: bool(p["metadata"].get("deletionTimestamp")), timeout=5)
        assert evicted["status"]["phase"] == "Running"  # deleted, but nobody is left to stop it
        cluster.set_node_ready("node-0", True)
        store.wait_for("pods", "default", "p", lambda p: p is None, timeout=5)  # the kubelet is back and finishes it


# ---------------------------------------------------------------------------------------------
# HTTP, through the official client


@pytest.fixture
def api():
    with KubeAPI(bookmark_interval=0.2) as server:
        server.install_crd(CRD)
        yield server


@pytest.fixture
def client(api: KubeAPI, tmp_path):
    from kubernetes import client as k8s
    from kubernetes import config

    api_client = config.new_client_from_config(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
    yield k8s, api_client
    api_client.close()


def test_http_create_list_watch(api: KubeAPI, client) -> None:
    k8s, api_client = client
    core = k8s.CoreV1Api(api_client)
    body, status, _ = core.create_namespaced_pod_with_http_info("default", pod("web-1", {"app": "web"}))
    assert status == 201 and body.metadata.uid and body.status.phase == "Pending"
    core.create_namespaced_pod("default", pod("db-1", {"app": "db"}))
    listed = core.list_namespaced_pod("default", label_selector="app=web")
    assert [p.metadata.name for p in listed.items] == ["web-1"]
    since = listed.metadata.resource_version
    core.patch_namespaced_pod("web-1", "default", {"metadata": {"labels": {"v": "2"}}})
    core.delete_namespaced_pod("db-1", "default")  # unscheduled: deleted at once
    from kubernetes import watch

    events = []
    for event in watch.Watch().stream(core.list_namespaced_pod, "default", resource_version=since, timeout_seconds=1):
        events.append((event["type"], event["object"].metadata.name))
    assert events == [("MODIFIED", "web-1"), ("DELETED", "db-1")]
    with pytest.raises(k8s.ApiException) as exc:
        core.create_namespaced_pod("default", pod("web-1"))
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "AlreadyExists"


def test_http_watch_gone_and_bookmarks(api: KubeAPI, tmp_path) -> None:
    from kubernetes import client as k8s
    from kubernetes import config, watch

    with KubeAPI(history=3) as small:
        for i in range(6):
            small.store.create("configmaps", {"metadata": {"name": f"c{i}"}}, "default")
        lines = requests.get(f"{small.url}/api/v1/namespaces/default/configmaps",
                             params={"watch": "1", "resourceVersion": "1"}, timeout=5).text.splitlines()
        error = json.loads(lines[0])
        assert error["type"] == "ERROR" and error["object"]["code"] == 410 and error["object"]["reason"] == "Expired"
        api_client = config.new_client_from_config(str(small.write_kubeconfig(tmp_path / "small")))
        core = k8s.CoreV1Api(api_client)
        with pytest.raises(k8s.ApiException) as exc:  # the client turns the ERROR event into a 410
            for _ in watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version="1", timeout_seconds=1):
                pass
        assert exc.value.status == 410
        api_client.close()
    rv = api.store.resource_version
    api.store.create("configmaps", {"metadata": {"name": "fresh"}}, "default")
    response = requests.get(f"{api.url}/api/v1/namespaces/default/configmaps",
                            params={"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "1"},
                            stream=True, timeout=5)
    events = [json.loads(line) for line in response.iter_lines() if line]
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "fresh"
    bookmark = next(e for e in events if e["type"] == "BOOKMARK")
    assert int(bookmark["object"]["metadata"]["resourceVersion"]) >= int(events[0]["object"]["metadata"]["resourceVersion"])


def test_http_watch_selection_and_pagination(api: KubeAPI) -> None:
    base = f"{api.url}/api/v1/namespaces/default/configmaps"
    for i in range(5):
        api.store.create("configmaps", {"metadata": {"name": f"c{i}", "labels": {"team": "a"}}}, "default")
    since = api.store.resource_version
    api.store.patch("configmaps", "default", "c1", {"metadata": {"labels": {"team": "b"}}})  # leaves team=a
    api.store.patch("configmaps", "default", "c1", {"metadata": {"labels": {"team": "a"}}})  # comes back
    api.store.patch("configmaps", "default", "c2", {"metadata": {"labels": {"team": "c"}}})
    lines = requests.get(base, params={"watch": "1", "resourceVersion": since, "labelSelector": "team=a",
                                       "timeoutSeconds": "1"}, timeout=5).text.splitlines()
    seen = [(e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["labels"]["team"]) for e in map(json.loads, lines)]
    assert seen == [("DELETED", "c1", "a"), ("ADDED", "c1", "a"), ("DELETED", "c2", "a")]
    first = requests.get(base, params={"limit": "2"}).json()
    assert [i["metadata"]["name"] for i in first["items"]] == ["c0", "c1"] and first["metadata"]["remainingItemCount"] == 3
    rest = requests.get(base, params={"limit": "10", "continue": first["metadata"]["continue"]}).json()
    assert [i["metadata"]["name"] for i in rest["items"]] == ["c2", "c3", "c4"] and "continue" not in rest["metadata"]
    assert requests.get(base, params={"limit": "x"}).status_code == 400


def test_http_leases_and_dry_run(api: KubeAPI, client) -> None:
    import datetime as dt

    k8s, api_client = client
    coordination = k8s.CoordinationV1Api(api_client)
    now = dt.datetime.now(dt.UTC)
    spec = k8s.V1LeaseSpec(holder_identity="op-0", lease_duration_seconds=15, acquire_time=now, renew_time=now)
    lease = coordination.create_namespaced_lease("default", k8s.V1Lease(metadata=k8s.V1ObjectMeta(name="leader"), spec=spec))
    assert lease.spec.renew_time == now
    lease.spec.holder_identity = "op-1"
    renewed = coordination.replace_namespaced_lease("leader", "default", lease)
    assert renewed.spec.holder_identity == "op-1"
    with pytest.raises(k8s.ApiException) as exc:
        coordination.replace_namespaced_lease("leader", "default", lease)  # stale resourceVersion
    assert exc.value.status == 409
    core = k8s.CoreV1Api(api_client)
    dry = core.create_namespaced_config_map("default", {"metadata": {"name": "dry"}}, dry_run="All")
    assert dry.metadata.name == "dry" and api.store.try_get("configmaps", "default", "dry") is None


def test_http_errors_never_break_the_server(api: KubeAPI) -> None:
    base = f"{api.url}/apis/example.dev/v1/namespaces/default/widgets"
    cases = [
        (requests.post(base, data="{not json", headers={"Content-Type": "application/json"}), 400),
        (requests.get(base, params={"labelSelector": "a in (b"}), 400),
        (requests.get(f"{api.url}/apis/example.dev/v1/namespaces/default/gizmos"), 404),
        (requests.get(f"{api.url}/nonsense/path"), 404),
        (requests.get(f"{base}/missing"), 404),
        (requests.patch(f"{base}/missing", data="{}", headers={"Content-Type": "text/plain"}), 415),
        (requests.post(base, json=[1, 2]), 400),
        (requests.put(base, json={}), 405),
        (requests.post(f"{api.url}/api/v1/namespaces/default/pods", json={"metadata": {"name": "x"}, "spec": "no"}), 400),
        (requests.post(f"{api.url}/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "x", "labels": {"v": 1}}}), 400),
        (requests.post(f"{api.url}/api/v1/namespaces/default/pods", json={"metadata": {"name": "x"}, "spec": {"containers": "c"}}), 400),
        (requests.delete(f"{base}/missing", data="[]"), 400),
    ]
    for response, code in cases:
        assert response.status_code == code, response.text
        status = response.json()
        assert status["kind"] == "Status" and status["code"] == code
    assert requests.get(f"{api.url}/version").json()["major"] == "1"  # still serving


def test_http_custom_resources_and_validation(api: KubeAPI, client) -> None:
    k8s, api_client = client
    custom = k8s.CustomObjectsApi(api_client)
    created = custom.create_namespaced_custom_object("example.dev", "v1", "default", "widgets", widget())
    assert created["metadata"]["generation"] == 1
    with pytest.raises(k8s.ApiException) as exc:
        custom.create_namespaced_custom_object("example.dev", "v1", "default", "widgets", widget("bad", size=11))
    status = json.loads(exc.value.body)
    assert exc.value.status == 422 and status["reason"] == "Invalid"
    assert status["details"]["causes"][0]["field"] == "spec.size"
    patched = custom.patch_namespaced_custom_object_status("example.dev", "v1", "default", "widgets", "w1",
                                                           {"status": {"phase": "Ready", "count": 1}})
    assert patched["status"]["phase"] == "Ready" and patched["metadata"]["generation"] == 1
    response = requests.post(f"{api.url}/apis/example.dev/v1/namespaces/default/widgets", json=widget("w2", junk=1))
    assert response.status_code == 201 and "unknown field" in response.headers["Warning"]
    table = requests.get(f"{api.url}/apis/example.dev/v1/namespaces/default/widgets",
                         headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}).json()
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Size"]
    assert [r["cells"] for r in table["rows"]] == [["w1", 3], ["w2", 3]]


def test_http_discovery_and_logs(api: KubeAPI) -> None:
    core = requests.get(f"{api.url}/api/v1").json()
    names = {r["name"] for r in core["resources"]}
    assert {"pods", "pods/status", "pods/log", "namespaces", "events", "configmaps", "secrets"} <= names
    group = requests.get(f"{api.url}/apis/example.dev/v1").json()
    entry = next(r for r in group["resources"] if r["name"] == "widgets")
    assert entry["kind"] == "Widget" and entry["shortNames"] == ["wd"] and entry["namespaced"]
    assert any(r["name"] == "widgets/status" for r in group["resources"])
    groups = {g["name"] for g in requests.get(f"{api.url}/apis").json()["groups"]}
    assert {"example.dev", "apiextensions.k8s.io", "coordination.k8s.io", "events.k8s.io"} <= groups
    with SimCluster(api, nodes=["node-0"]) as cluster:
        api.store.create("pods", pod("logger"), "default")
        api.store.wait_for("pods", "default", "logger", lambda p: p["status"]["phase"] == "Running")
        cluster.log("default", "logger", "line 1\nline 2\n")
        text = requests.get(f"{api.url}/api/v1/namespaces/default/pods/logger/log", params={"tailLines": "1"}).text
        assert text == "line 2\n"
    assert api.request_count == len(api.request_log) and ("GET", "/api/v1") in api.request_log


# ---------------------------------------------------------------------------------------------
# kopf


def test_kopf_operator_sees_custom_resources_and_patches_status(api: KubeAPI) -> None:
    import logging

    import kopf

    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=api.url, insecure=True, token="test", default_namespace="default")

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 5
        settings.persistence.finalizer = "example.dev/kopf-finalizer"

    @kopf.on.create("example.dev", "v1", "widgets", registry=registry)
    def created(body: Any, spec: Any, patch: Any, **_: Any) -> None:
        kopf.info(body, reason="Seen", message=f"size {spec['size']}")
        patch.status["phase"] = "Seen"
        patch.status["count"] = spec["size"]

    @kopf.on.delete("example.dev", "v1", "widgets", registry=registry)
    def deleted(**_: Any) -> None:
        pass

    stop = threading.Event()

    def run() -> None:
        async def main() -> None:
            flag: asyncio.Event = asyncio.Event()

            async def watch_stop() -> None:
                while not stop.is_set():
                    await asyncio.sleep(0.05)
                flag.set()

            waiter = asyncio.create_task(watch_stop())
            await kopf.operator(registry=registry, standalone=True, clusterwide=False, namespaces=["default"], stop_flag=flag)
            await waiter

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        api.store.create("widgets", widget(size=4), "default")
        done = api.store.wait_for("widgets", "default", "w1", lambda o: (o.get("status") or {}).get("phase") == "Seen", timeout=15)
        assert done["status"]["count"] == 4
        assert "example.dev/kopf-finalizer" in done["metadata"]["finalizers"]
        deadline = time.time() + 10
        while not any(e["reason"] == "Seen" for e in api.store.list("events", "default")):
            assert time.time() < deadline, "kopf posted no event"
            time.sleep(0.05)
        event = next(e for e in api.store.list("events", "default") if e["reason"] == "Seen")
        assert event["involvedObject"]["name"] == "w1" and event["message"] == "size 4"
        api.store.delete("widgets", "default", "w1")  # kopf's finalizer holds it until the delete handler ran
        api.store.wait_for("widgets", "default", "w1", lambda o: o is None, timeout=15)
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()


# ---------------------------------------------------------------------------------------------
# robustness: arbitrary bodies are answered with a 4xx Status, never an internal error

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 20) | st.text(max_size=5) | st.sampled_from(["web", "a/b", "Always"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["metadata", "spec", "status", "name", "labels", "containers", "image", "size", "nodes",
                         "min", "max", "finalizers", "ownerReferences", "data", "x"]), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(resource=st.sampled_from(["pods", "widgets", "configmaps", "namespaces", "crds"]), body=_json_values,
       patch=_json_values, patch_type=st.sampled_from(["merge", "json", "strategic", "apply"]))
def test_arbitrary_bodies_never_crash(store: Store, resource: str, body: Any, patch: Any, patch_type: str) -> None:
    namespace = None if resource in ("namespaces", "crds") else "default"
    for attempt in (
        lambda: store.create(resource, body, namespace),
        lambda: store.create(resource, {"metadata": {"name": "fuzz"}, **(body if isinstance(body, dict) else {})}, namespace),
        lambda: store.create(resource, {"metadata": {"name": "fuzz-spec"}, "spec": body}, namespace),
        lambda: store.patch(resource, namespace, "fuzz-spec", {"spec": patch}, "merge"),
        lambda: store.patch(resource, namespace, "fuzz", patch, patch_type, field_manager="fuzz"),
        lambda: store.update(resource, patch, namespace, name="fuzz"),
    ):
        try:
            attempt()
        except APIError as exc:
            assert 400 <= exc.code < 500, exc
    for name in ("fuzz", "fuzz-spec"):
        try:
            store.delete(resource, namespace, name, grace_period_seconds=0)
        except APIError as exc:
            assert exc.code == 404
