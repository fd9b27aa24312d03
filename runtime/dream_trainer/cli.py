"""The ``dream-trainer`` command.

    dream-trainer run SCRIPT [--nproc N] [-- SCRIPT_ARGS...]

``run`` launches SCRIPT on N local processes with torchrun (standalone rendezvous), exactly as the
operator launches it in each pod, and exits with the script's status.
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
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.command == "run":
        sys.exit(_run(args, rest))


if __name__ == "__main__":
    main()
