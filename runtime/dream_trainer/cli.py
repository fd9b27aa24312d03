"""The ``dream-trainer`` command.

    dream-trainer run SCRIPT [--nproc N] [-- SCRIPT_ARGS...]
    dream-trainer export CHECKPOINT OUTPUT.safetensors [--model NAME]

``run`` launches SCRIPT on N local processes with torchrun (standalone rendezvous), exactly as the
operator launches it in each pod, and exits with the script's status. ``export`` writes a model's
weights from a sharded checkpoint (any fsspec URL, any world size) as one safetensors file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from dream_trainer.utils.launch import torchrun_command


def _run(args: argparse.Namespace, script_args: list[str]) -> int:
    if not os.path.isfile(args.script):
        print(f"dream-trainer run: script {args.script!r} not found", file=sys.stderr)
        return 2
    if args.nproc < 1:
        print(f"dream-trainer run: --nproc={args.nproc} must be >= 1", file=sys.stderr)
        return 2
    command = torchrun_command(args.script, args.nproc, script_args)
    print(f"dream-trainer: {' '.join(command[2:])}", flush=True)
    return subprocess.call(command)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dream-trainer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a training script on N local processes")
    run.add_argument("script", help="the training script, e.g. examples/llama/train.py")
    run.add_argument("--nproc", type=int, default=1, help="processes (one per device)")
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
