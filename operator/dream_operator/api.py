"""The DreamTrainJob API: one set of pydantic models from which the CRD, the operator's parsing,
the local runner and the torchx scheduler all derive. Nothing restates this schema by hand.

Field names are camelCase on the wire (as every Kubernetes API) and snake_case in Python.
Constraints that a CRD can express (ranges, enums, ``min <= max``) are declared here so that the
generated CRD enforces them in the API server; the operator parses with the same models, so a
manifest that slips past an older CRD still ends ``Failed`` with a message naming the field.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

GROUP = "dreamtrainer.dev"
VERSION = "v1alpha1"
KIND = "DreamTrainJob"
PLURAL = "dreamtrainjobs"
SINGULAR = "dreamtrainjob"
SHORT_NAMES = ["dtj"]
API_VERSION = f"{GROUP}/{VERSION}"

MAX_JOB_NAME_LENGTH = 56
"""Pod hostnames are ``<job>-<node rank>`` and must fit the 63-character DNS label limit."""

M = TypeVar("M", bound=BaseModel)

_PRESERVE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
"""Schema of a field holding a Kubernetes object this API passes through unchanged (affinity,
volumes, ...): the API server keeps it as given, and the kubelet validates it."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


# --- spec -------------------------------------------------------------------------------------


class Nodes(_Model):
    """How many nodes (pods) train together: a fixed ``count``, or ``min``..``max`` for an
    elastic job that keeps training while at least ``min`` nodes remain."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.count) != (has(self.min) || has(self.max))",
                    "message": "set either nodes.count, or nodes.min and nodes.max",
                },
                {
                    "rule": "has(self.min) == has(self.max)",
                    "message": "nodes.min and nodes.max are set together",
                },
                {
                    "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
                    "message": "nodes.min must be <= nodes.max",
                },
            ]
        }
    )

    count: Annotated[int | None, Field(ge=1, le=4096)] = None
    min: Annotated[int | None, Field(ge=1, le=4096)] = None
    max: Annotated[int | None, Field(ge=1, le=4096)] = None

    @model_validator(mode="after")
    def _one_shape(self) -> Nodes:
        if (self.count is None) == (self.min is None and self.max is None):
            raise ValueError("set either nodes.count, or nodes.min and nodes.max")
        if (self.min is None) != (self.max is None):
            raise ValueError("nodes.min and nodes.max are set together")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"nodes.min ({self.min}) must be <= nodes.max ({self.max})")
        return self

    @property
    def min_nodes(self) -> int:
        return self.count if self.count is not None else self.min  # type: ignore[return-value]

    @property
    def max_nodes(self) -> int:
        return self.count if self.count is not None else self.max  # type: ignore[return-value]

    @property
    def elastic(self) -> bool:
        return self.min_nodes < self.max_nodes


class SecretRef(_Model):
    """A Secret in the job's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253)]


class SecretKeyRef(_Model):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    key: Annotated[str, Field(min_length=1)] = "api-key"


class Checkpoint(_Model):
    """Where checkpoints live. Credentials come from a Secret (its keys become env variables,
    e.g. ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``), never inline."""

    uri: Annotated[str, Field(min_length=1, pattern=r"^(s3://|gs://|file://|/)\S+$")]
    secret_ref: SecretRef | None = None


class RestartPolicy(_Model):
    """Gang restarts: on any worker or node failure the whole group is recreated, waiting
    ``backoffSeconds * 2**(restarts-1)`` (capped at ``maxBackoffSeconds``) before it."""

    max_restarts: Annotated[int, Field(ge=0, le=10000)] = 3
    backoff_seconds: Annotated[int, Field(ge=0, le=86400)] = 10
    max_backoff_seconds: Annotated[int, Field(ge=0, le=86400)] = 300


class CleanPodPolicy(StrEnum):
    ALL = "All"
    RUNNING = "Running"
    NONE = "None"


class RunPolicy(_Model):
    suspend: bool = False
    active_deadline_seconds: Annotated[int | None, Field(ge=1, le=31_536_000)] = None
    ttl_seconds_after_finished: Annotated[int | None, Field(ge=0, le=31_536_000)] = None
    clean_pod_policy: CleanPodPolicy = CleanPodPolicy.RUNNING


class EnvVar(_Model):
    name: Annotated[str, Field(min_length=1, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
    value: str | None = None
    value_from: Annotated[dict[str, Any] | None, Field(json_schema_extra=_PRESERVE)] = None


Quantity = Annotated[
    int | str, Field(json_schema_extra={"x-kubernetes-int-or-string": True})
]


class Resources(_Model):
    """Resources of the worker container on each node (e.g. ``nvidia.com/gpu: 8``)."""

    limits: dict[str, Quantity] | None = None
    requests: dict[str, Quantity] | None = None


class PodTemplate(_Model):
    """Overrides applied to every worker pod."""

    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    node_selector: dict[str, str] | None = None
    tolerations: Annotated[list[dict[str, Any]] | None, Field(json_schema_extra={"items": _PRESERVE})] = None
    affinity: Annotated[dict[str, Any] | None, Field(json_schema_extra=_PRESERVE)] = None
    volumes: Annotated[list[dict[str, Any]] | None, Field(json_schema_extra={"items": _PRESERVE})] = None
    volume_mounts: Annotated[list[dict[str, Any]] | None, Field(json_schema_extra={"items": _PRESERVE})] = None
    service_account_name: Annotated[str | None, Field(min_length=1, max_length=253)] = None
    priority_class_name: Annotated[str | None, Field(min_length=1, max_length=253)] = None
    scheduler_name: Annotated[str | None, Field(min_length=1, max_length=253)] = None


class WandBMode(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    DISABLED = "disabled"


class WandB(_Model):
    """Weights & Biases settings, passed to the runtime as ``WANDB_*`` variables."""

    project: Annotated[str | None, Field(min_length=1)] = None
    entity: Annotated[str | None, Field(min_length=1)] = None
    group: Annotated[str | None, Field(min_length=1)] = None
    mode: WandBMode = WandBMode.ONLINE
    api_key_secret_ref: SecretKeyRef | None = None


class ImagePullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class DreamTrainJobSpec(_Model):
    """What to train and how: each node runs ``torchrun`` with ``command`` + ``args``."""

    image: Annotated[str, Field(min_length=1, max_length=1024)]
    image_pull_policy: ImagePullPolicy | None = None
    command: Annotated[
        list[str],
        Field(
            min_length=1,
            description="The training program as torchrun takes it: a script path "
            "(['train.py']) or a module (['-m', 'pkg.train']).",
        ),
    ]
    args: list[str] = []
    env: list[EnvVar] = []
    env_from: Annotated[list[dict[str, Any]], Field(json_schema_extra={"items": _PRESERVE})] = []
    resources: Resources | None = None
    nodes: Nodes
    nproc_per_node: Annotated[int, Field(ge=1, le=128)] = 1
    checkpoint: Checkpoint | None = None
    restart_policy: RestartPolicy = RestartPolicy()
    run_policy: RunPolicy = RunPolicy()
    pod_template: PodTemplate = PodTemplate()
    wandb: WandB | None = None


# --- status -----------------------------------------------------------------------------------


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ConditionType(StrEnum):
    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Reason(StrEnum):
    """The machine-readable ``reason`` of every condition and Event."""

    JOB_CREATED = "JobCreated"
    PODS_CREATING = "PodsCreating"
    ALL_NODES_RUNNING = "AllNodesRunning"
    WORKER_FAILED = "WorkerFailed"
    WORKER_EVICTED = "WorkerEvicted"
    WORKER_PREEMPTED = "WorkerPreempted"
    WORKER_DELETED = "WorkerDeleted"
    NODE_LOST = "NodeLost"
    RENDEZVOUS_HOST_LOST = "RendezvousHostLost"
    BACKOFF = "Backoff"
    REPLACING_NODE = "ReplacingNode"
    MAX_RESTARTS_EXCEEDED = "MaxRestartsExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    INVALID_SPEC = "InvalidSpec"
    SUSPENDED = "JobSuspended"
    RESUMED = "JobResumed"
    SUCCEEDED = "AllWorkersSucceeded"


class Condition(_Model):
    type: ConditionType
    status: Annotated[str, Field(pattern="^(True|False|Unknown)$")]
    reason: str
    message: str = ""
    last_transition_time: datetime


class Progress(_Model):
    """What the runtime's rank 0 last reported (see ``dream_trainer.contract``)."""

    step: Annotated[int, Field(ge=0)] | None = None
    epoch: Annotated[int, Field(ge=0)] | None = None
    loss: float | None = None
    update_time: datetime | None = None


class DreamTrainJobStatus(_Model):
    phase: Phase = Phase.PENDING
    conditions: list[Condition] = []
    restarts: Annotated[int, Field(ge=0)] = 0
    group_generation: Annotated[
        int,
        Field(ge=0, description="Generation of the pod group: DREAM_RESTART_COUNT of its pods."),
    ] = 0
    world_size: Annotated[int, Field(ge=0)] = 0
    ready_nodes: Annotated[int, Field(ge=0)] = 0
    start_time: datetime | None = None
    completion_time: datetime | None = None
    group_start_time: Annotated[
        datetime | None,
        Field(description="When the current group may be (or was) created; after a restart "
              "this lies a backoff in the future."),
    ] = None
    last_checkpoint: str | None = None
    progress: Progress | None = None
    message: str | None = None
    observed_generation: Annotated[int, Field(ge=0)] = 0


class Metadata(BaseModel):
    """The part of ``metadata`` the operator reads."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=to_camel)
    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    resource_version: str = ""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class DreamTrainJob(BaseModel):
    """A whole DreamTrainJob as read from the API server."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)
    api_version: str = Field(API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: Metadata
    spec: DreamTrainJobSpec
    status: DreamTrainJobStatus = DreamTrainJobStatus()


def parse(model: type[M], obj: Any) -> M:
    """Validate a decoded manifest the way the API server types JSON: strictly (``false`` is no
    integer, ``"2"`` is no count) but with enums and timestamps given as strings."""
    return model.model_validate_json(json.dumps(obj), strict=True)


def describe_validation_error(error: ValidationError, root: str = "") -> str:
    """One line per problem, each naming the field by its manifest path (``spec.nodes.min``)."""
    lines = []
    for item in error.errors():
        path = ".".join([root] * bool(root) + [str(p) for p in item["loc"]])
        value = item.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"{path}: {item['msg']} (got {shown})")
    return "; ".join(lines)
