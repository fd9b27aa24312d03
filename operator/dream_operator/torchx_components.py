"""torchx components for DreamTrainJobs (registered as ``dream.*``: ``torchx run -s dreamtrainjob
dream.trainer --script train.py --nnodes 2 ...``).

The app describes what every node runs: ``torchrun --nnodes ... --nproc-per-node N <script or -m
module> args``. Submitted with the ``dreamtrainjob`` scheduler, the operator runs torchrun with
its own rendezvous and restarts, so only the program and ``--nproc-per-node`` are kept from it;
with one node the same app also runs locally (``torchx run -s local_cwd dream.trainer ...``).

No ``from __future__ import annotations`` here: torchx reads the parameters' types at run time to
build the command line, and its linter (an AST check) accepts only ``Optional``/``Dict``/``List``.
It converts ``Optional[int]`` arguments to nothing but strings, so optional numbers are plain ``int``
with a sentinel default.
"""
# ruff: noqa: UP006, UP035, UP045

from pathlib import PurePosixPath
from typing import Dict, List, Optional

from torchx import specs

DEFAULT_IMAGE = "ghcr.io/dream-trainer/runtime:0.1.0"


def trainer(
    *script_args: str,
    script: Optional[str] = None,
    m: Optional[str] = None,
    image: str = DEFAULT_IMAGE,
    name: Optional[str] = None,
    nnodes: str = "1",
    nproc_per_node: int = 0,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    h: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    checkpoint_uri: Optional[str] = None,
    max_restarts: int = -1,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """A dream-trainer training program on one or more nodes (one torchrun per node).

    Args:
        script_args: arguments of the training program
        script: the training script (a path inside the image), e.g. examples/llama/train.py
        m: the training module instead of a script, e.g. my_pkg.train
        image: the container image holding the program and dream-trainer
        name: the job's name (default: the script's or module's name); a unique suffix is added
        nnodes: number of nodes, or MIN:MAX for an elastic job
        nproc_per_node: processes per node (0: the number of GPUs, else 1)
        cpu: CPUs per node
        gpu: GPUs per node (nvidia.com/gpu)
        memMB: memory per node in MiB
        h: a torchx named resource (overrides cpu, gpu and memMB)
        env: environment variables, e.g. LR=3e-4,SEED=1
        checkpoint_uri: where checkpoints live (s3://bucket/prefix, file://..., /path)
        max_restarts: gang restarts before the job fails (-1: the operator's default)
        mounts: type=bind|volume,src=...,dst=...[,readonly] mounts on every node
    """
    if (script is None) == (m is None):
        raise ValueError("give exactly one of --script and -m")
    min_nodes, _, max_nodes = nnodes.partition(":")
    if not max_nodes:
        max_nodes = min_nodes
    sizes_ok = min_nodes.isdigit() and max_nodes.isdigit()
    if not sizes_ok or not 1 <= int(min_nodes) <= int(max_nodes):
        raise ValueError(f"--nnodes {nnodes!r}: give N or MIN:MAX with 1 <= MIN <= MAX")
    resource = specs.resource(cpu=cpu, gpu=gpu, memMB=memMB, h=h)
    nproc = nproc_per_node or resource.gpu or 1
    program = [script] if script is not None else ["-m", m]
    launcher = [f"--nnodes={min_nodes}:{max_nodes}", f"--nproc-per-node={nproc}"]
    if max_nodes == "1":
        launcher.append("--standalone")  # what a single-node run needs anywhere but the operator
    stem = PurePosixPath(script).stem if script is not None else m.rpartition(".")[2]
    # DreamTrainJob settings a role cannot express (see dream_operator.torchx_scheduler).
    spec: Dict[str, object] = {}
    if checkpoint_uri is not None:
        spec["checkpoint"] = {"uri": checkpoint_uri}
    if max_restarts >= 0:
        spec["restartPolicy"] = {"maxRestarts": max_restarts}
    return specs.AppDef(
        name=name or stem,
        roles=[
            specs.Role(
                name="trainer",
                image=image,
                entrypoint="torchrun",
                args=[*launcher, *program, *script_args],
                env=dict(env or {}),
                num_replicas=int(max_nodes),
                min_replicas=int(min_nodes) if min_nodes != max_nodes else None,
                max_retries=max(max_restarts, 0),
                resource=resource,
                mounts=specs.parse_mounts(mounts) if mounts else [],
                metadata={"dreamtrainjob.spec": spec} if spec else {},
            )
        ],
    )
