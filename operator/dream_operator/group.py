"""What should exist for a job and a group generation: its worker pods and headless Service.

Pure functions of the job; no API calls. Every pod runs ``torchrun`` with c10d rendezvous hosted
by node rank 0 and reached through the headless Service, with the rendezvous id made of the job's
uid and the group generation, so that a restarted group never meets stragglers of an old one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dream_trainer import contract

from . import api

LABEL_JOB = "dreamtrainer.dev/job-name"
LABEL_GENERATION = "dreamtrainer.dev/group-generation"
LABEL_RANK = "dreamtrainer.dev/node-rank"
CONTAINER = "trainer"
RDZV_ENDPOINT_ENV = "DREAM_RDZV_ENDPOINT"
"""``host:port`` of the rendezvous; torchrun's argument refers to it as ``$(DREAM_RDZV_ENDPOINT)``,
which the kubelet expands, so a local runner can point it elsewhere."""

TERMINATION_MESSAGE_PATH = "/dev/termination-log"
"""Where the trainer writes its final progress (``DREAM_TERMINATION_LOG``); the kubelet copies it
into the pod's status (``state.terminated.message``) when the container exits."""

TERMINATION_GRACE_SECONDS = 120
"""Time a worker gets after SIGTERM to finish its step and write an emergency checkpoint."""


@dataclass(frozen=True)
class GroupSettings:
    """Operator-wide settings that shape every group (not part of a job's spec)."""

    rendezvous_port: int = 29400
    progress_port: int = 8090
    elastic_max_restarts: int = 100
    """torchrun ``--max-restarts`` for elastic jobs: how often agents re-form the group in place
    when a node leaves or joins, before the pod fails and the operator restarts the group."""


def rendezvous_host(job: api.DreamTrainJob) -> str:
    """DNS name of node rank 0 through the headless Service (``<pod hostname>.<service>.<ns>.svc``)."""
    meta = job.metadata
    return f"{meta.name}-0.{meta.name}.{meta.namespace}.svc"


def pod_name(job_name: str, generation: int, rank: int) -> str:
    return f"{job_name}-g{generation}-{rank}"


def owner_reference(job: api.DreamTrainJob) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": job.metadata.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def torchrun_args(job: api.DreamTrainJob, generation: int, settings: GroupSettings) -> list[str]:
    """torchrun's arguments followed by the training program's."""
    spec = job.spec
    nodes = spec.nodes
    args = [
        f"--nnodes={nodes.min_nodes}:{nodes.max_nodes}",
        f"--nproc-per-node={spec.nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=$({RDZV_ENDPOINT_ENV})",
        f"--rdzv-id={job.metadata.uid}-{generation}",
        f"--max-restarts={settings.elastic_max_restarts if nodes.elastic else 0}",
    ]
    program = list(spec.command)
    if program[0] in ("-m", "--module"):
        args.append("--module")
        program = program[1:]
    return args + program + list(spec.args)


def _env(job: api.DreamTrainJob, generation: int, settings: GroupSettings) -> list[dict[str, Any]]:
    spec, meta = job.spec, job.metadata
    env: list[dict[str, Any]] = [e.model_dump(by_alias=True, exclude_none=True) for e in spec.env]
    ours = {
        contract.JOB_NAME: meta.name,
        contract.JOB_NAMESPACE: meta.namespace,
        contract.JOB_UID: meta.uid,
        contract.RESTART_COUNT: str(generation),
        contract.PROGRESS_PORT: str(settings.progress_port),
        contract.TERMINATION_LOG: TERMINATION_MESSAGE_PATH,
        RDZV_ENDPOINT_ENV: f"{rendezvous_host(job)}:{settings.rendezvous_port}",
    }
    if spec.checkpoint is not None:
        ours[contract.CHECKPOINT_URI] = spec.checkpoint.uri
    if spec.wandb is not None:
        wandb = spec.wandb
        for key, value in (("WANDB_PROJECT", wandb.project), ("WANDB_ENTITY", wandb.entity),
                           ("WANDB_RUN_GROUP", wandb.group or meta.name), ("WANDB_MODE", wandb.mode)):
            if value is not None:
                ours[key] = str(value)
    env += [{"name": k, "value": v} for k, v in ours.items()]
    if spec.wandb is not None and spec.wandb.api_key_secret_ref is not None:
        ref = spec.wandb.api_key_secret_ref
        env.append({"name": "WANDB_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def reserved_env_problems(job: api.DreamTrainJob) -> list[str]:
    """User env variables that would shadow what the operator sets."""
    reserved = set(contract.ALL) | {RDZV_ENDPOINT_ENV}
    return [
        f"spec.env[{i}].name: {e.name!r} is set by the operator; remove it"
        for i, e in enumerate(job.spec.env) if e.name in reserved
    ]


def worker_pod(job: api.DreamTrainJob, generation: int, rank: int,
               settings: GroupSettings = GroupSettings()) -> dict[str, Any]:
    """The pod of node ``rank`` in group ``generation``."""
    spec, meta = job.spec, job.metadata
    template = spec.pod_template
    labels = {**(template.labels or {}), LABEL_JOB: meta.name,
              LABEL_GENERATION: str(generation), LABEL_RANK: str(rank)}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "command": ["torchrun"],
        "args": torchrun_args(job, generation, settings),
        "env": _env(job, generation, settings),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "ports": [
            {"name": "rendezvous", "containerPort": settings.rendezvous_port},
            {"name": "progress", "containerPort": settings.progress_port},
        ],
    }
    if spec.image_pull_policy is not None:
        container["imagePullPolicy"] = str(spec.image_pull_policy)
    env_from = list(spec.env_from)
    if spec.checkpoint is not None and spec.checkpoint.secret_ref is not None:
        env_from.append({"secretRef": {"name": spec.checkpoint.secret_ref.name}})
    if env_from:
        container["envFrom"] = env_from
    if spec.resources is not None:
        container["resources"] = spec.resources.model_dump(by_alias=True, exclude_none=True)
    if template.volume_mounts:
        container["volumeMounts"] = list(template.volume_mounts)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the operator restarts the whole group, never one container
        "hostname": f"{meta.name}-{rank}",
        "subdomain": meta.name,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "containers": [container],
    }
    for key, value in (("nodeSelector", template.node_selector),
                       ("tolerations", template.tolerations),
                       ("affinity", template.affinity), ("volumes", template.volumes),
                       ("serviceAccountName", template.service_account_name),
                       ("priorityClassName", template.priority_class_name),
                       ("schedulerName", template.scheduler_name)):
        if value:
            pod_spec[key] = value
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(meta.name, generation, rank),
            "namespace": meta.namespace,
            "labels": labels,
            "annotations": dict(template.annotations or {}),
            "ownerReferences": [owner_reference(job)],
        },
        "spec": pod_spec,
    }


def headless_service(job: api.DreamTrainJob, settings: GroupSettings = GroupSettings()) -> dict[str, Any]:
    """The Service that gives each worker a DNS name; addresses are published before pods are
    ready because the rendezvous happens before any readiness."""
    meta = job.metadata
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": meta.name,
            "namespace": meta.namespace,
            "labels": {LABEL_JOB: meta.name},
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: meta.name},
            "ports": [{"name": "rendezvous", "port": settings.rendezvous_port}],
        },
    }


def desired_group(job: api.DreamTrainJob, generation: int,
                  settings: GroupSettings = GroupSettings()) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Service and the pods of group ``generation`` (one pod per node, ``nodes.max`` of them)."""
    pods = [worker_pod(job, generation, rank, settings) for rank in range(job.spec.nodes.max_nodes)]
    return headless_service(job, settings), pods
