"""``dream-operator``: run the operator, or (re)generate the CRDs from the API models."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from . import crd, crd_docs


def _crd(args: argparse.Namespace) -> int:
    out = Path(args.out)
    docs = Path(args.docs) if args.docs else None
    if args.check:
        stale = crd.stale(out)
        for name in stale:
            print(f"{out / name} differs from the API models; run `dream-operator crd`", file=sys.stderr)
        docs_stale = docs is not None and (
            not docs.is_file() or docs.read_text() != crd_docs.reference_markdown()
        )
        if docs_stale:
            print(f"{docs} differs from the API models; run `dream-operator crd --docs {docs}`",
                  file=sys.stderr)
        return 1 if stale or docs_stale else 0
    for path in crd.write(out):
        print(path)
    if docs is not None:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(crd_docs.reference_markdown())
        print(docs)
    return 0


def _run(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from .controller import ControllerSettings
    from .handlers import OperatorConfig, run_operator

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ControllerSettings(
        workers=args.workers, resync_seconds=args.resync_seconds,
        rendezvous_port=args.rendezvous_port, progress_port=args.progress_port,
        progress_interval_seconds=args.progress_interval_seconds,
        node_lost_after_seconds=args.node_lost_after_seconds,
        force_delete_after_seconds=args.force_delete_after_seconds,
    )
    config = OperatorConfig(settings=settings, kubeconfig=args.kubeconfig,
                            lease_namespace=args.lease_namespace, lease_name=args.lease_name,
                            lease_duration_seconds=args.lease_duration_seconds,
                            lease_renew_seconds=min(5.0, args.lease_duration_seconds / 3))
    if args.metrics_port:
        start_http_server(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    asyncio.run(run_operator(config, namespaces=args.namespace, liveness_endpoint=liveness))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dream-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("crd", help="write crds/ from the pydantic API models")
    p.add_argument("--out", default="crds", help="directory (default: crds)")
    p.add_argument("--check", action="store_true", help="exit 1 if the files differ from the models")
    p.add_argument("--docs", metavar="PATH",
                   help="also write the Markdown field reference there (docs/dreamtrainjob.md)")
    p.set_defaults(fn=_crd)

    p = sub.add_parser("run", help="run the operator")
    p.add_argument("--namespace", action="append", help="watch only this namespace (repeatable); "
                   "default: all namespaces")
    p.add_argument("--kubeconfig", help="default: in-cluster service account, else $KUBECONFIG")
    p.add_argument("--lease-namespace", default="default", help="namespace of the leader Lease")
    p.add_argument("--lease-name", default="dream-operator")
    p.add_argument("--lease-duration-seconds", type=int, default=15,
                   help="a new leader takes over this long after the old one stopped renewing")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics; 0 disables")
    p.add_argument("--health-port", type=int, default=8080, help="/healthz probe; 0 disables")
    p.add_argument("--workers", type=int, default=16, help="jobs reconciled concurrently")
    p.add_argument("--resync-seconds", type=float, default=60.0)
    p.add_argument("--rendezvous-port", type=int, default=29400,
                   help="torchrun c10d rendezvous port on node rank 0's pod")
    p.add_argument("--progress-port", type=int, default=8090, help="runtime progress port in pods")
    p.add_argument("--progress-interval-seconds", type=float, default=15.0)
    p.add_argument("--node-lost-after-seconds", type=float, default=0.0)
    p.add_argument("--force-delete-after-seconds", type=float, default=30.0)
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(fn=_run)

    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
