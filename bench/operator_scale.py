"""Operator at scale, against the in-process Kubernetes API emulator and its simulated kubelet.

Measures, in one run:
1. N jobs created at once -> p50/p99 seconds until all of a job's pods exist, against the same
   pods created directly through the API by a client with as many threads as the operator has
   workers (what a user scripting pod creation would get; the floor the operator adds to);
2. seconds from a worker failure to the replacement group (all pods of the next generation
   Running), for several jobs;
3. API requests per job lifecycle (create -> running -> one restart -> succeeded), counted at
   the emulator, minus the benchmark's own.

    python bench/operator_scale.py --jobs 100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dream_operator import api
from dream_operator.controller import ControllerSettings
from dream_operator.group import LABEL_GENERATION, LABEL_JOB
from operator_harness import OperatorThread, crd_manifest

from e2e.kubeapi import KubeAPI, SimCluster

NS = "default"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def job(name: str, nodes: int) -> dict:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name, "namespace": NS},
            "spec": {"image": "dream:bench", "command": ["train.py"], "nodes": {"count": nodes},
                     "restartPolicy": {"maxRestarts": 3, "backoffSeconds": 0}}}


def pods_by_job(core: kubernetes.client.CoreV1Api) -> dict[str, list]:
    out: dict[str, list] = {}
    for pod in core.list_namespaced_pod(NS).items:
        out.setdefault(pod.metadata.labels.get(LABEL_JOB, ""), []).append(pod)
    return out


def wait_all(predicate, timeout: float, interval: float = 0.02) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(interval)
    return time.perf_counter()


def direct_baseline(n_jobs: int, nodes: int, workers: int) -> list[float]:
    """Seconds until each 'job''s pods exist when a client creates them itself."""
    with KubeAPI() as kube, tempfile.TemporaryDirectory() as tmp:
        client = kubernetes.config.new_client_from_config(str(kube.write_kubeconfig(Path(tmp) / "k")))
        client.configuration.connection_pool_maxsize = workers
        core = kubernetes.client.CoreV1Api(client)
        start = time.perf_counter()

        def create(i: int) -> float:
            for rank in range(nodes):
                core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod",
                                                "metadata": {"name": f"j{i}-{rank}", "labels": {LABEL_JOB: f"j{i}"}},
                                                "spec": {"containers": [{"name": "t", "image": "x"}]}})
            return time.perf_counter() - start

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(create, range(n_jobs)))


def operator_run(n_jobs: int, nodes: int, restarts: int) -> dict[str, float]:
    settings = ControllerSettings(resync_seconds=30.0, force_delete_after_seconds=1.0)
    with KubeAPI() as kube, tempfile.TemporaryDirectory() as tmp:
        kube.install_crd(crd_manifest())
        sim = SimCluster(kube, nodes=[f"node-{i}" for i in range(max(nodes, 8))])
        kubeconfig = kube.write_kubeconfig(Path(tmp) / "kubeconfig")
        client = kubernetes.config.new_client_from_config(str(kubeconfig))
        client.configuration.connection_pool_maxsize = 16
        core = kubernetes.client.CoreV1Api(client)
        custom = kubernetes.client.CustomObjectsApi(client)
        ours = 0
        try:
            with OperatorThread(kubeconfig, settings=settings, lease_duration_seconds=15):
                time.sleep(1.0)  # the lease is taken and the watches are up
                names = [f"job-{i:03d}" for i in range(n_jobs)]
                created: dict[str, float] = {}
                # Timestamp pods as the API server stores them: no polling load on the system.
                seen: dict[str, float] = {}
                count: dict[str, int] = {}

                def on_write(event) -> None:
                    obj = event.object
                    if event.type == "ADDED" and obj.get("kind") == "Pod":
                        job_name = obj["metadata"]["labels"].get(LABEL_JOB, "")
                        count[job_name] = count.get(job_name, 0) + 1
                        if count[job_name] == nodes:
                            seen[job_name] = time.perf_counter() - start
                kube.store.subscribe(on_write)
                start = time.perf_counter()
                with ThreadPoolExecutor(16) as pool:
                    def create(name: str) -> None:
                        custom.create_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.PLURAL, job(name, nodes))
                        created[name] = time.perf_counter()
                    list(pool.map(create, names))
                ours += n_jobs
                wait_all(lambda: len(seen) == n_jobs, 300, 0.1)
                to_pods = list(seen.values())
                last_created = max(created.values()) - start

                def all_in(phase: str) -> bool:
                    nonlocal ours
                    ours += 1
                    items = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.PLURAL)["items"]
                    return all((j.get("status") or {}).get("phase") == phase for j in items)

                # Wait until every job runs, then fail one worker in `restarts` jobs.
                wait_all(lambda: all_in("Running"), 300, 0.2)
                recovery = []
                for name in names[:restarts]:
                    sim.fail_pod(NS, f"{name}-g0-1", exit_code=1)
                    failed_at = time.perf_counter()

                    def replaced() -> bool:
                        nonlocal ours
                        ours += 1
                        pods = core.list_namespaced_pod(NS, label_selector=f"{LABEL_JOB}={name}").items
                        return len(pods) == nodes and all(
                            p.metadata.labels[LABEL_GENERATION] == "1" and p.status.phase == "Running" for p in pods)
                    recovery.append(wait_all(replaced, 60, 0.05) - failed_at)

                # Finish every job.
                for name, pods in pods_by_job(core).items():
                    for pod in pods:
                        sim.succeed_pod(NS, pod.metadata.name)
                ours += 1

                wait_all(lambda: all_in("Succeeded"), 300, 0.2)
                requests = kube.request_count - ours
        finally:
            sim.stop()
    return {
        "create_spread_s": last_created,
        "p50_s": statistics.median(to_pods),
        "p99_s": percentile(to_pods, 0.99),
        "recovery_median_s": statistics.median(recovery),
        "recovery_max_s": max(recovery),
        "requests_per_job": requests / n_jobs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=2, help="pods per job")
    parser.add_argument("--restarts", type=int, default=10, help="jobs whose worker is failed")
    args = parser.parse_args()
    direct = direct_baseline(args.jobs, args.nodes, ControllerSettings().workers)
    result = operator_run(args.jobs, args.nodes, args.restarts)
    base50, base99 = statistics.median(direct), percentile(direct, 0.99)
    print(f"{args.jobs} jobs x {args.nodes} pods")
    print(f"  operator: all pods exist p50 {result['p50_s']:.2f}s p99 {result['p99_s']:.2f}s "
          f"(jobs created over {result['create_spread_s']:.2f}s)")
    print(f"  direct pod creation:        p50 {base50:.2f}s p99 {base99:.2f}s "
          f"-> ratio p50 {result['p50_s'] / base50:.2f}x p99 {result['p99_s'] / base99:.2f}x")
    print(f"  worker failure -> replacement group Running: median {result['recovery_median_s']:.2f}s "
          f"max {result['recovery_max_s']:.2f}s over {args.restarts} jobs")
    print(f"  API requests per job lifecycle (create, run, 1 restart for {args.restarts}/{args.jobs}, "
          f"succeed): {result['requests_per_job']:.1f}")


if __name__ == "__main__":
    main()
