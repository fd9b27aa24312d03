"""A torchx scheduler that runs an ``AppDef`` as a DreamTrainJob: ``torchx run -s dreamtrainjob``.

Submitting builds the job's manifest from the app's single role and validates it with the same
pydantic models the operator parses with (:mod:`dream_operator.api`), so a bad manifest fails at
dry run with the field named; ``describe`` maps the job's status to an ``AppState``; ``cancel``
deletes the job (its pods and Service go with it through their ownerReferences); ``log_iter``
reads the pods' logs. App ids are ``<namespace>:<job name>``, as for torchx's kubernetes
scheduler.

**The training program.** Every node of a DreamTrainJob runs ``torchrun`` with options the
operator owns (nodes, rendezvous, restarts), so the role describes the program that torchrun
launches: a script (``train.py``) or a module (``-m pkg.train``) and its arguments. A role whose
command itself launches torchrun (``torchrun ...``, ``python -m torch.distributed.run ...``, or
either inside ``bash -c '...'`` as torchx's ``dist.ddp`` writes it) is unwrapped: the program and
its arguments are kept, ``--nproc-per-node`` becomes ``spec.nprocPerNode``, ``-m`` makes the
program a module, and every other torchrun option is dropped. A plain ``python [-u] script.py``
or ``python -m module`` loses its interpreter. Anything else (another binary, a shell pipeline,
``--no-python``) is rejected, naming what was given.

**Sizes.** ``role.num_replicas`` nodes, or ``role.min_replicas``..``role.num_replicas`` for an
elastic job. Processes per node: the ``nproc_per_node`` run option, else torchrun's
``--nproc-per-node`` in the role's command, else the role's GPU count, else 1.

**Precedence.** The spec built from the role, then ``role.metadata["dreamtrainjob.spec"]`` (a
partial spec in manifest form, merged in: a component may set any field, e.g.
``{"checkpoint": {"uri": ...}}``), then the run options.

**States** (see :data:`PHASE_STATES`): a job the operator has not seen yet is ``SUBMITTED``;
``Pending``, ``Restarting`` (a failed group is being replaced; the workers are gone, as after a
preemption, which torchx also reports as ``PENDING``) and ``Suspended`` are ``PENDING``;
``Running`` is ``RUNNING``; ``Succeeded`` and ``Failed`` are terminal; a job being deleted is
``CANCELLED`` and a deleted one is gone (``describe`` returns ``None``).
"""

from __future__ import annotations

import codecs
import copy
import logging
import re
import secrets
import shlex
import string
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, TypedDict

import kubernetes
import yaml
from kubernetes.client.rest import ApiException
from pydantic import ValidationError
from torchx.schedulers.api import (
    DescribeAppResponse,
    ListAppResponse,
    Scheduler,
    Stream,
    filter_regex,
    split_lines,
)
from torchx.specs import (
    NULL_RESOURCE,
    AppDef,
    AppDryRunInfo,
    AppState,
    BindMount,
    ReplicaStatus,
    Role,
    RoleStatus,
    VolumeMount,
    macros,
    runopts,
)

from . import api, group, kube

log = logging.getLogger(__name__)

BACKEND = "dreamtrainjob"
METADATA_SPEC = "dreamtrainjob.spec"
"""``role.metadata`` key of a partial spec (manifest form), merged over the role's."""
ANNOTATION_APP = "torchx.pytorch.org/app-name"
ANNOTATION_ROLE = "torchx.pytorch.org/role-name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
GPU = "nvidia.com/gpu"
SUFFIX_LENGTH = 5
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

PHASE_STATES: dict[str, AppState] = {
    api.Phase.PENDING: AppState.PENDING,
    api.Phase.RUNNING: AppState.RUNNING,
    api.Phase.RESTARTING: AppState.PENDING,
    api.Phase.SUSPENDED: AppState.PENDING,
    api.Phase.SUCCEEDED: AppState.SUCCEEDED,
    api.Phase.FAILED: AppState.FAILED,
}
"""``status.phase`` -> ``AppState`` (no status yet: ``SUBMITTED``; unknown: ``UNKNOWN``)."""

POD_STATES: dict[str, AppState] = {
    "Pending": AppState.PENDING,
    "Running": AppState.RUNNING,
    "Succeeded": AppState.SUCCEEDED,
    "Failed": AppState.FAILED,
}


class DreamTrainJobOpts(TypedDict, total=False):
    namespace: str
    nproc_per_node: int | None
    max_restarts: int | None
    checkpoint_uri: str | None
    checkpoint_secret: str | None
    image_pull_policy: str | None
    service_account: str | None
    priority_class: str | None
    wandb_project: str | None
    wandb_entity: str | None
    wandb_api_key_secret: str | None


# --- the program --------------------------------------------------------------------------------

_TORCHRUN_FLAGS = {"--standalone", "-m", "--module", "--no-python", "--no_python", "--run-path",
                   "--run_path", "--virtual-local-rank", "--virtual_local_rank"}
"""torchrun's options that take no value; every other one takes one (checked against torch's own
parser in the tests)."""
_MODULE_FLAGS = {"-m", "--module"}
_NO_PYTHON_FLAGS = {"--no-python", "--no_python"}
_NPROC = {"--nproc-per-node", "--nproc_per_node"}
_SHELLS = {"bash", "sh", "zsh", "dash"}
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
_TORCHRUN_MODULES = {"torch.distributed.run"}


@dataclass(frozen=True)
class Program:
    """What torchrun runs on every node: ``command`` as ``spec.command`` takes it (a script path,
    or ``["-m", module]``), its ``args``, and torchrun's ``--nproc-per-node`` if one was given."""

    command: list[str]
    args: list[str]
    nproc_per_node: str | None = None


def _unwrap_shell(argv: list[str]) -> list[str]:
    """``bash -c 'torchrun ...'`` -> the words of the script (no shell features allowed)."""
    if len(argv) < 3 or PurePosixPath(argv[0]).name not in _SHELLS or argv[1] != "-c":
        return argv
    if len(argv) > 3:
        raise ValueError(f"cannot unwrap {shlex.join(argv)!r}: arguments after the -c script")
    lexer = shlex.shlex(argv[2], posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    operators = [w for w in words if w and set(w) <= set(lexer.punctuation_chars)]
    if operators:
        raise ValueError(f"the role's shell command {argv[2]!r} uses {operators[0]!r}: a "
                         "DreamTrainJob runs one program (torchrun <script|-m module> args)")
    return words


def _parse_torchrun(argv: list[str], what: str) -> Program:
    """torchrun's own options, then the program and its arguments."""
    nproc, module, i = None, False, 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        option, has_value, value = argv[i].partition("=")
        if option in _NO_PYTHON_FLAGS:
            raise ValueError(f"{what}: torchrun {option} is not supported: the operator runs "
                             "the program with Python")
        if option in _TORCHRUN_FLAGS:
            module = module or option in _MODULE_FLAGS
            i += 1
            continue
        if not has_value:
            if i + 1 >= len(argv):
                raise ValueError(f"{what}: torchrun option {option} has no value")
            value = argv[i + 1]
            i += 1
        if option in _NPROC:
            nproc = value
        i += 1
    if i >= len(argv):
        raise ValueError(f"{what}: torchrun is given no training script or module")
    command = ["-m", argv[i]] if module else [argv[i]]
    return Program(command, argv[i + 1:], nproc)


def split_program(entrypoint: str, args: list[str]) -> Program:
    """The program torchrun should run for a role's ``entrypoint`` + ``args`` (see the module's
    docstring); raises ``ValueError`` naming the command when it is not a Python program."""
    given = [entrypoint, *args]
    what = f"role command {shlex.join(given)!r}"
    argv = _unwrap_shell(given)
    if not argv:
        raise ValueError(f"{what} is empty")
    head = PurePosixPath(argv[0]).name
    if head == "torchrun":
        return _parse_torchrun(argv[1:], what)
    if _PYTHON.match(head):
        rest = argv[1:]
        while rest and rest[0] == "-u":  # unbuffered output: torchrun's workers stream anyway
            rest = rest[1:]
        if len(rest) >= 2 and rest[0] == "-m":
            if rest[1] in _TORCHRUN_MODULES:
                return _parse_torchrun(rest[2:], what)
            return Program(["-m", rest[1]], rest[2:])
        if rest and not rest[0].startswith("-"):
            return Program([rest[0]], rest[1:])
        raise ValueError(f"{what}: expected python [-u] <script> or python -m <module>")
    if head.endswith(".py"):
        return Program([argv[0]], argv[1:])
    raise ValueError(f"{what} is not a Python program: every node of a DreamTrainJob runs "
                     "torchrun <script.py|-m module> [args] (optionally written as torchrun ..., "
                     "python -m torch.distributed.run ... or python ...)")


def _nproc(value: str | None, gpus: int, what: str) -> int | None:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    if value in ("gpu", "auto") and gpus > 0:
        return gpus
    if value == "auto":
        return 1
    raise ValueError(f"{what}: --nproc-per-node={value} needs a number (or 'gpu' with GPUs "
                     "requested)")


# --- the manifest -------------------------------------------------------------------------------


def job_name(app_name: str, suffix: str | None = None) -> str:
    """A unique DNS-1035 name of at most ``api.MAX_JOB_NAME_LENGTH`` characters: the app's name
    lowercased, with ``_``, ``.``, ``/`` and spaces made ``-``, cut to fit a random suffix."""
    base = re.sub(r"[_./\s]+", "-", app_name.lower())
    base = re.sub(r"-{2,}", "-", base).strip("-")
    if not _DNS_1035.match(base):
        raise ValueError(
            f"app name {app_name!r} cannot name a DreamTrainJob: it must start with a letter and "
            "hold only letters, digits, '-', '_', '.', '/' or spaces (a lowercase DNS-1035 label)")
    suffix = suffix or "".join(secrets.choice(string.ascii_lowercase + string.digits)
                               for _ in range(SUFFIX_LENGTH))
    base = base[: api.MAX_JOB_NAME_LENGTH - len(suffix) - 1].rstrip("-")
    return f"{base}-{suffix}"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: dictionaries key by key, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resources(role: Role) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """``spec.resources`` and a node selector (from the resource's capabilities)."""
    res = role.resource
    if res == NULL_RESOURCE:
        return None, {}
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if res.cpu > 0:
        requests["cpu"] = res.cpu
    if res.memMB > 0:
        requests["memory"] = limits["memory"] = f"{res.memMB}Mi"
    if res.gpu > 0:
        limits[GPU] = res.gpu
    limits.update(res.devices)
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    selector = {k: str(v) for k, v in res.capabilities.items()}
    return resources or None, selector


def _mounts(role: Role) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes, mounts = [], []
    for i, mount in enumerate(role.mounts):
        name = f"mount-{i}"
        if isinstance(mount, BindMount):
            volumes.append({"name": name, "hostPath": {"path": mount.src_path}})
        elif isinstance(mount, VolumeMount):
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": mount.src}})
        else:
            raise TypeError(f"role {role.name!r}: {type(mount).__name__} is not supported by "
                             f"{BACKEND} (bind and volume mounts are)")
        mounts.append({"name": name, "mountPath": mount.dst_path, "readOnly": mount.read_only})
    return volumes, mounts


def _options_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of the spec the run options set."""
    spec: dict[str, Any] = {}
    if cfg.get("nproc_per_node") is not None:
        spec["nprocPerNode"] = cfg["nproc_per_node"]
    if cfg.get("max_restarts") is not None:
        spec["restartPolicy"] = {"maxRestarts": cfg["max_restarts"]}
    if cfg.get("image_pull_policy"):
        spec["imagePullPolicy"] = cfg["image_pull_policy"]
    checkpoint = {k: v for k, v in (("uri", cfg.get("checkpoint_uri")),
                                    ("secretRef", cfg.get("checkpoint_secret"))) if v}
    if "secretRef" in checkpoint:
        checkpoint["secretRef"] = {"name": checkpoint["secretRef"]}
    if checkpoint:
        spec["checkpoint"] = checkpoint
    template = {k: cfg[o] for k, o in (("serviceAccountName", "service_account"),
                                       ("priorityClassName", "priority_class")) if cfg.get(o)}
    if template:
        spec["podTemplate"] = template
    wandb = {k: cfg[o] for k, o in (("project", "wandb_project"), ("entity", "wandb_entity"))
             if cfg.get(o)}
    if cfg.get("wandb_api_key_secret"):
        wandb["apiKeySecretRef"] = {"name": cfg["wandb_api_key_secret"]}
    if wandb:
        spec["wandb"] = wandb
    return spec


def app_to_manifest(app: AppDef, cfg: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The DreamTrainJob for ``app`` (validated; raises ``ValueError`` saying what is wrong)."""
    if len(app.roles) != 1:
        names = ", ".join(repr(r.name) for r in app.roles)
        raise ValueError(f"app {app.name!r} has {len(app.roles)} roles ({names}): a DreamTrainJob "
                         "runs exactly one role (one program on every node)")
    namespace = cfg.get("namespace") or "default"
    name = name or job_name(app.name)
    values = macros.Values(img_root="", app_id=f"{namespace}:{name}",
                           replica_id=macros.replica_id, rank0_env="TORCHX_RANK0_HOST")
    role = values.apply(app.roles[0])
    what = f"role {role.name!r}"
    program = split_program(role.entrypoint, role.args)
    for text in [*program.command, *program.args, *role.env.values()]:
        if macros.replica_id in text:
            raise ValueError(f"{what}: {macros.replica_id} is not supported: every node runs the "
                             "same command (read the node rank from GROUP_RANK in the program)")
    gpus = max(role.resource.gpu, 0)
    nproc = _nproc(program.nproc_per_node, gpus, what) or gpus or 1
    if role.min_replicas is not None and role.min_replicas != role.num_replicas:
        nodes = {"min": role.min_replicas, "max": role.num_replicas}
    else:
        nodes = {"count": role.num_replicas}
    spec: dict[str, Any] = {"image": role.image, "command": program.command}
    if program.args:
        spec["args"] = program.args
    if role.env:
        spec["env"] = [{"name": k, "value": v} for k, v in role.env.items()]
    spec["nodes"] = nodes
    spec["nprocPerNode"] = nproc
    resources, selector = _resources(role)
    if resources:
        spec["resources"] = resources
    if role.max_retries > 0:
        spec["restartPolicy"] = {"maxRestarts": role.max_retries}
    volumes, mounts = _mounts(role)
    template = {k: v for k, v in (("nodeSelector", selector), ("volumes", volumes),
                                  ("volumeMounts", mounts)) if v}
    if template:
        spec["podTemplate"] = template
    overlay = role.metadata.get(METADATA_SPEC) or {}
    if not isinstance(overlay, dict):
        raise TypeError(f"{what}: metadata[{METADATA_SPEC!r}] must be a mapping (a partial spec)")
    spec = _merge(_merge(spec, overlay), _options_spec(cfg))
    if "checkpoint" in spec and "uri" not in spec["checkpoint"]:
        raise ValueError("run option checkpoint_secret needs a checkpoint URI (the run option "
                         "checkpoint_uri, or the component's)")
    manifest = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: "torchx"},
            "annotations": {ANNOTATION_APP: app.name, ANNOTATION_ROLE: role.name},
        },
        "spec": spec,
    }
    validate_manifest(manifest)
    return manifest


def validate_manifest(manifest: dict[str, Any]) -> api.DreamTrainJob:
    """Parse as the operator does; ``ValueError`` naming each bad field."""
    name = manifest["metadata"]["name"]
    try:
        job = api.parse(api.DreamTrainJob, manifest)
    except ValidationError as error:
        raise ValueError(f"invalid DreamTrainJob {name!r}: "
                         f"{api.describe_validation_error(error)}") from None
    problems = group.reserved_env_problems(job)
    if problems:
        raise ValueError(f"invalid DreamTrainJob {name!r}: {'; '.join(problems)}")
    return job


# --- status -------------------------------------------------------------------------------------


def app_state(job: dict[str, Any]) -> AppState:
    status = job.get("status") or {}
    phase = status.get("phase")
    if phase is None:
        state = AppState.SUBMITTED
    else:
        state = PHASE_STATES.get(phase, AppState.UNKNOWN)
    if job["metadata"].get("deletionTimestamp") and state not in (AppState.SUCCEEDED,
                                                                  AppState.FAILED):
        return AppState.CANCELLED
    return state


def _message(job: dict[str, Any]) -> str:
    status = job.get("status") or {}
    phase, message = status.get("phase"), status.get("message")
    if phase is None:
        return "submitted; the operator has not reported a status yet"
    return f"{phase}: {message}" if message else phase


def _role_name(job: dict[str, Any]) -> str:
    return (job["metadata"].get("annotations") or {}).get(ANNOTATION_ROLE) or group.CONTAINER


def _split_app_id(app_id: str) -> tuple[str, str]:
    namespace, sep, name = app_id.partition(":")
    if not sep or not namespace or not name:
        raise ValueError(f"app id {app_id!r} is not <namespace>:<job name>")
    return namespace, name


# --- the scheduler ------------------------------------------------------------------------------


class DreamTrainJobScheduler(Scheduler[DreamTrainJobOpts]):
    """Runs a single-role ``AppDef`` as a DreamTrainJob through the dream-operator.

    The kubernetes client is the in-cluster service account, else ``kubeconfig`` (or
    ``$KUBECONFIG``, else ``~/.kube/config``).
    """

    def __init__(self, session_name: str, client: kubernetes.client.ApiClient | None = None,
                 kubeconfig: str | None = None) -> None:
        super().__init__(BACKEND, session_name)
        self._client = client
        self._own_client = client is None
        self._kubeconfig = kubeconfig

    # clients

    def _api_client(self) -> kubernetes.client.ApiClient:
        if self._client is None:
            self._client = kube.load_client(self._kubeconfig, pool_size=4)
        return self._client

    def _custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self._api_client())

    def _core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self._api_client())

    def close(self) -> None:
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None

    # submission

    def _run_opts(self) -> runopts:
        opts = runopts()
        opts.add("namespace", type_=str, default="default",
                 help="Kubernetes namespace of the DreamTrainJob")
        opts.add("nproc_per_node", type_=int,
                 help="processes per node (default: the component's torchrun --nproc-per-node, "
                      "else the role's GPU count, else 1)")
        opts.add("max_restarts", type_=int,
                 help="gang restarts before the job fails (default: the role's max_retries if "
                      "> 0, else the operator's default)")
        opts.add("checkpoint_uri", type_=str, help="spec.checkpoint.uri (s3://, gs://, file://, /)")
        opts.add("checkpoint_secret", type_=str,
                 help="Secret whose keys become the workers' env (AWS_ACCESS_KEY_ID, ...)")
        opts.add("image_pull_policy", type_=str, help="Always, IfNotPresent or Never")
        opts.add("service_account", type_=str, help="service account of the worker pods")
        opts.add("priority_class", type_=str, help="PriorityClass of the worker pods")
        opts.add("wandb_project", type_=str, help="Weights & Biases project")
        opts.add("wandb_entity", type_=str, help="Weights & Biases entity")
        opts.add("wandb_api_key_secret", type_=str,
                 help="Secret holding the W&B API key under the key 'api-key'")
        return opts

    def _validate(self, app: AppDef, scheduler: str) -> None:
        # Roles without a resource are fine (no requests); everything else is checked when the
        # manifest is built in _submit_dryrun, which every submission goes through.
        pass

    def _submit_dryrun(self, app: AppDef, cfg: DreamTrainJobOpts) -> AppDryRunInfo[dict[str, Any]]:
        manifest = app_to_manifest(app, dict(cfg))
        return AppDryRunInfo(manifest, lambda m: yaml.safe_dump(m, sort_keys=False))

    def schedule(self, dryrun_info: AppDryRunInfo[dict[str, Any]]) -> str:
        manifest = dryrun_info.request
        meta = manifest["metadata"]
        try:
            created = self._custom().create_namespaced_custom_object(
                api.GROUP, api.VERSION, meta["namespace"], api.PLURAL, manifest)
        except ApiException as error:
            raise ValueError(f"could not create DreamTrainJob {meta['namespace']}/{meta['name']}: "
                             f"{_api_message(error)}") from None
        return f"{created['metadata']['namespace']}:{created['metadata']['name']}"

    # status

    def _get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._custom().get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def describe(self, app_id: str) -> DescribeAppResponse | None:
        namespace, name = _split_app_id(app_id)
        job = self._get(namespace, name)
        if job is None:
            return None
        state = app_state(job)
        status = job.get("status") or {}
        spec = job.get("spec") or {}
        nodes = spec.get("nodes") or {}
        replicas = nodes.get("count") or nodes.get("max") or 0
        role_name = _role_name(job)
        generation = status.get("groupGeneration", 0)
        pods = {
            int(p.metadata.labels[group.LABEL_RANK]): p
            for p in self._core().list_namespaced_pod(
                namespace, label_selector=f"{group.LABEL_JOB}={name},"
                                          f"{group.LABEL_GENERATION}={generation}").items
            if (p.metadata.labels or {}).get(group.LABEL_RANK, "").isdigit()
        }
        missing = state if state in (AppState.SUCCEEDED, AppState.FAILED,
                                     AppState.CANCELLED) else AppState.PENDING
        statuses = []
        for rank in range(max(replicas, max(pods, default=-1) + 1)):
            pod = pods.get(rank)
            statuses.append(ReplicaStatus(
                id=rank, role=role_name,
                state=POD_STATES.get(pod.status.phase, AppState.UNKNOWN) if pod else missing,
                hostname=f"{name}-{rank}.{name}.{namespace}.svc"))
        role = Role(name=role_name, image=spec.get("image", ""),
                    entrypoint=" ".join(spec.get("command") or []), args=spec.get("args") or [],
                    num_replicas=replicas, min_replicas=nodes.get("min"),
                    env={e["name"]: e["value"] for e in spec.get("env") or [] if "value" in e},
                    max_retries=(spec.get("restartPolicy") or {}).get("maxRestarts", 0))
        return DescribeAppResponse(
            app_id=app_id, state=state, num_restarts=status.get("restarts", 0),
            msg=_message(job), roles=[role], roles_statuses=[RoleStatus(role_name, statuses)])

    def list(self) -> list[ListAppResponse]:
        namespace = self._namespace()
        jobs = self._custom().list_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]
        return [ListAppResponse(app_id=f"{namespace}:{j['metadata']['name']}", state=app_state(j))
                for j in jobs]

    def _namespace(self) -> str:
        """The kubeconfig context's namespace (``list`` takes no run options), else default."""
        try:
            _, context = kubernetes.config.list_kube_config_contexts(self._kubeconfig)
            return context["context"].get("namespace") or "default"
        except (kubernetes.config.ConfigException, KeyError, TypeError, OSError):
            return "default"

    def _cancel_existing(self, app_id: str) -> None:
        namespace, name = _split_app_id(app_id)
        body = kubernetes.client.V1DeleteOptions(propagation_policy="Background")
        try:
            self._custom().delete_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, body=body)
        except ApiException as error:
            if error.status != 404:
                raise

    # logs

    def log_iter(self, app_id: str, role_name: str, k: int = 0, regex: str | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 should_tail: bool = False, streams: Stream | None = None) -> Iterable[str]:
        """Lines of node ``k``'s pod in the job's current group generation (its trainer
        container: stdout and stderr together). ``should_tail`` follows the log until the pod
        ends; ``until`` is not supported."""
        if until is not None:
            raise ValueError(f"{BACKEND} cannot read logs up to a time ('until')")
        if streams not in (None, Stream.COMBINED):
            raise ValueError(f"{BACKEND} only has the combined stdout+stderr log stream")
        namespace, name = _split_app_id(app_id)
        job = self._get(namespace, name)
        if job is None:
            raise ValueError(f"DreamTrainJob {namespace}/{name} does not exist")
        if role_name != _role_name(job):
            raise ValueError(f"app {app_id} has no role {role_name!r}; its role is "
                             f"{_role_name(job)!r}")
        generation = (job.get("status") or {}).get("groupGeneration", 0)
        pod = group.pod_name(name, generation, k)
        kwargs: dict[str, Any] = {"container": group.CONTAINER}
        if since is not None:
            kwargs["since_seconds"] = max(1, int((datetime.now() - since).total_seconds()))
        if should_tail:
            lines: Iterable[str] = self._follow(namespace, pod, kwargs)
        else:
            # Raw bytes: some client versions return str(bytes) ("b'...'") for a text/plain body.
            response = self._core().read_namespaced_pod_log(pod, namespace,
                                                            _preload_content=False, **kwargs)
            lines = split_lines(response.data.decode("utf-8", errors="replace"))
        return filter_regex(regex, lines) if regex else lines

    def _follow(self, namespace: str, pod: str, kwargs: dict[str, Any]) -> Iterator[str]:
        core = self._core()
        while True:
            try:
                response = core.read_namespaced_pod_log(pod, namespace, follow=True,
                                                        _preload_content=False, **kwargs)
                break
            except ApiException as error:  # 400 while the container waits to start
                if error.status != 400 or core.read_namespaced_pod(
                        pod, namespace).status.phase != "Pending":
                    raise
                time.sleep(1.0)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            pending = ""
            for chunk in response.stream(decode_content=True):
                pending += decoder.decode(chunk)
                *lines, pending = pending.split("\n")
                for line in lines:
                    yield line + "\n"
            if pending:
                yield pending
        finally:
            response.release_conn()


def _api_message(error: ApiException) -> str:
    try:
        return yaml.safe_load(error.body).get("message") or str(error.reason)
    except (yaml.YAMLError, AttributeError, TypeError):
        return f"{error.status} {error.reason}"


def create_scheduler(session_name: str, client: kubernetes.client.ApiClient | None = None,
                     kubeconfig: str | None = None, **kwargs: Any) -> DreamTrainJobScheduler:
    """The factory torchx calls (entry point ``torchx.schedulers``: ``dreamtrainjob``)."""
    return DreamTrainJobScheduler(session_name, client=client, kubeconfig=kubeconfig)
