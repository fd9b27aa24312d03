"""Bad DreamTrainJob manifests, generated: each is rejected by the generated CRD's schema (as the
emulated API server applies it) or ends Failed with a message naming the field; the operator's
decision function never raises on any of them."""

from __future__ import annotations

import copy
from typing import Any

from dream_operator import api, crd
from dream_operator.api import Phase
from dream_operator.reconcile import reconcile
from hypothesis import HealthCheck, given, settings
from operator_fixtures import T0, broken_manifests, node
from pydantic import ValidationError


def spec_is_valid(body: dict[str, Any]) -> bool:
    try:
        api.parse(api.DreamTrainJobSpec, body["spec"])
        return True
    except ValidationError:
        return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken_manifests())
def test_decision_never_raises_and_names_the_field(body):
    decision = reconcile(body, [], [node("n0")], T0)
    if spec_is_valid(body):
        assert decision.status.phase != Phase.FAILED
    else:
        assert decision.status.phase == Phase.FAILED
        assert "spec." in decision.status.message, decision.status.message
        assert decision.actions == []


def server_view(body: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """What the emulated API server says about ``body`` under ``fieldValidation=Strict`` (kubectl's
    default), and the object it would store: unknown fields and nulls pruned, defaults applied."""
    from e2e.kubeapi import schema

    openapi = crd.openapi_schema()
    obj = copy.deepcopy(body)
    unknown = schema.prune(openapi, obj)
    schema.apply_defaults(openapi, obj)
    errors = [f"{path}: unknown field" for path in unknown] + [
        f"{e.field}: {e.body()}" for e in schema.validate(openapi, obj)]
    return errors, obj


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=broken_manifests())
def test_crd_schema_and_models_agree(body):
    """The API server (with the generated schema) rejects nothing the models accept, and the
    models accept everything it stores; every rejection names a field of the spec."""
    errors, stored = server_view(body)
    if errors:
        assert not spec_is_valid(body), errors
        # Besides the fields, the real server adds a "<nil>" note when CEL rules were skipped.
        named = [e for e in errors if not e.startswith("<nil>")]
        assert named and all(e.startswith("spec") for e in named), errors
    else:
        assert spec_is_valid(stored), "the CRD stores a spec the operator rejects"
