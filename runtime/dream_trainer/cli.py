"""The ``dream-trainer`` command.

    dream-trainer run SCRIPT [--nproc N] [-- SCRIPT_ARGS...]
    dream-trainer run JOB.yaml [--fail-node-at-step N] [--fail-node RANK] [-- EXTRA_ARGS...]
    dream-trainer export CHECKPOINT OUTPUT.safetensors [--model NAME]

``run SCRIPT`` launches SCRIPT on N local processes with torchrun (standalone rendezvous) and
exits with the script's status. ``run JOB.yaml`` runs a DreamTrainJob manifest on this machine:
one local torchrun agent per node with the operator's environment contract, gang restarts that
resume from the last checkpoint (see ``dream_operator.local``). ``export`` writes a model's
weights from a sharded checkpoint (any fsspec URL, any world size) as one safetensors file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from dream_trainer.utils.launch import torchrun_command


def _run(args: argparse.Namespace, script_args: list[str]) -> int:
    if args.script.endswith((".yaml", ".yml")):
        return _run_manifest(args, script_args)
    if args.fail_node_at_step is not None or args.fail_node is not None:
        print("dream-trainer run: --fail-node-at-step/--fail-node need a job manifest (.yaml)",
              file=sys.stderr)
        return 2
    if args.nproc is None:
        args.nproc = 1
    if not os.path.isfile(args.script):
        print(f"dream-trainer run: script {args.script!r} not found", file=sys.stderr)
        return 2
    if args.nproc < 1:
        print(f"dream-trainer run: --nproc={args.nproc} must be >= 1", file=sys.stderr)
        return 2
    command = torchrun_command(args.script, args.nproc, script_args)
    print(f"dream-trainer: {' '.join(command[2:])}", flush=True)
    return subprocess.call(command)


def _run_manifest(args: argparse.Namespace, extra_args: list[str]) -> int:
    if args.nproc is not None:
        print("dream-trainer run: --nproc is the manifest's spec.nprocPerNode; edit it there",
              file=sys.stderr)
        return 2
    try:
        from dream_operator import local
    except ImportError as error:  # pydantic/pyyaml missing
        print(f"dream-trainer run: running a manifest needs {error.name}: "
              "pip install 'dream-trainer[operator]'", file=sys.stderr)
        return 2
    return local.main(args.script, extra_args, fail_node_at_step=args.fail_node_at_step,
                      fail_node=args.fail_node, checkpoint=args.checkpoint,
                      run_dir=args.run_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dream-trainer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a training script or a job manifest locally")
    run.add_argument("script", help="a training script (examples/llama/train.py) or a "
                     "DreamTrainJob manifest (examples/jobs/llama.yaml)")
    run.add_argument("--nproc", type=int, default=None,
                     help="script: processes, one per device (default 1)")
    run.add_argument("--fail-node-at-step", type=int, default=None, metavar="N",
                     help="manifest: kill one node once rank 0 reports step N (shows a restart)")
    run.add_argument("--fail-node", type=int, default=None, metavar="RANK",
                     help="manifest: the node --fail-node-at-step kills (default: the last)")
    run.add_argument("--checkpoint", default=None, metavar="URI",
                     help="manifest: checkpoint storage instead of spec.checkpoint.uri")
    run.add_argument("--run-dir", default=None,
                     help="manifest: logs (and default checkpoints) here instead of "
                     "dream-runs/<job>/<time>")
    export = commands.add_parser("export", help="checkpoint -> consolidated safetensors")
    export.add_argument("checkpoint", help="a checkpoint directory, e.g. s3://bucket/run/step_000001000")
    export.add_argument("output", help="where to write the .safetensors file (any fsspec URL)")
    export.add_argument("--model", default="model", help="which model of the trainer")
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.command == "run":
        sys.exit(_run(args, rest))
    if rest:
        parser.error(f"unexpected arguments: {rest}")
    from dream_trainer.checkpoint.export import export_checkpoint

    names = export_checkpoint(args.checkpoint, args.output, args.model)
    print(f"dream-trainer: wrote {len(names)} tensors of {args.model!r} to {args.output}")


if __name__ == "__main__":
    main()
