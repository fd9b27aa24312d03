"""What a fault costs, end to end: the e2e environment (emulated API server, process kubelets,
SeaweedFS, the real operator) runs examples/jobs/llama-s3.yaml and a fault strikes at step ~30.

For each fault, from the pods' own output:
* seconds from the fault to the first training step of the restarted group,
* steps lost (last step printed before the fault minus the step the group resumed from),
against the baseline a user compares with: a fresh job's time from ``kubectl apply`` to its first
step (the cost of starting a group at all: scheduling, torchrun, imports, rendezvous).

    python bench/e2e_recovery.py --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e.harness import (  # noqa: E402
    JOB,
    LocalEnvironment,
    Recovery,
    finish,
    first_step_after,
    rank0_pod,
    start_job,
    train_through,
)


def cold_start(env: LocalEnvironment) -> float:
    """Seconds from applying a fresh job to its first training step."""
    started = start_job(env)
    finish(env, started)
    when, _ = first_step_after(env.log_lines(rank0_pod(env, 0, started)), started)
    return when - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalEnvironment.create(Path(tmp)) as env:
        faults = {
            "kill a worker (SIGKILL)": lambda: env.kill_pod_processes(f"{JOB}-g0-1"),
            "kill pod 0, the rendezvous host": lambda: env.kill_pod_processes(f"{JOB}-g0-0"),
            "node dies (NotReady)": lambda: env.kill_node_of(f"{JOB}-g0-1"),
            "SIGTERM (graceful delete)": lambda: env.evict(f"{JOB}-g0-1"),
        }
        starts = [cold_start(env) for _ in range(args.repeats)]
        results: dict[str, list[Recovery]] = {}
        for name, inject in faults.items():
            for _ in range(args.repeats):
                results.setdefault(name, []).append(train_through(env, name, inject))
                env.revive_nodes()
                time.sleep(1)
    base = statistics.median(starts)
    print(f"fresh job, apply -> first step: median {base:.1f} s over {len(starts)} runs")
    print("| fault | fault -> first step after resume (median, max) | vs. a fresh start "
          "| steps lost (each run) | restarts |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        times = [r.seconds_to_first_step for r in runs]
        print(f"| {name} | {statistics.median(times):.1f} s, {max(times):.1f} s "
              f"| {statistics.median(times) / base:.2f}x "
              f"| {', '.join(str(r.steps_lost) for r in runs)} "
              f"| {', '.join(str(r.restarts) for r in runs)} |")


if __name__ == "__main__":
    main()
