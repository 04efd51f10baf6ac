"""`smesh controller`: sign workload certificates requested through the Kubernetes CSR API."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import socket
from pathlib import Path

from smesh.cli.options import add_log_format, configure_logs


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", type=Path, help="default: $KUBECONFIG, ~/.kube/config or in-cluster"
    )
    parser.add_argument(
        "--namespace",
        default="smesh-system",
        help="where the CA Secret, trust bundle, Lease and agent live (default smesh-system)",
    )
    parser.add_argument("--trust-domain", default="cluster.local")
    parser.add_argument(
        "--metrics-address",
        default="0.0.0.0:9092",
        help="HOST:PORT of /metrics (default 0.0.0.0:9092; empty to disable)",
    )
    parser.add_argument(
        "--identity",
        help="this replica's name in the Lease (default: the pod's hostname plus a random tag)",
    )
    add_log_format(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from lightkube import AsyncClient  # noqa: PLC0415 - lightkube only for this command
    from prometheus_client import start_http_server  # noqa: PLC0415

    from smesh.controller.decide import Settings  # noqa: PLC0415
    from smesh.controller.lease import LeaderElector  # noqa: PLC0415
    from smesh.controller.run import Controller, ControllerMetrics, run  # noqa: PLC0415
    from smesh.errors import SmeshError  # noqa: PLC0415
    from smesh.kubernetes.client import KubeApi, load_config  # noqa: PLC0415

    configure_logs(args)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per request otherwise
    config = load_config(args.kubeconfig)
    settings = Settings(trust_domain=args.trust_domain, namespace=args.namespace)
    metrics = ControllerMetrics()
    if args.metrics_address:
        host, _, port = args.metrics_address.rpartition(":")
        if not host or not port.isdigit():
            raise SmeshError(f"--metrics-address {args.metrics_address!r} is not HOST:PORT")
        start_http_server(int(port), host.strip("[]"), registry=metrics.registry)
    identity = args.identity or f"{socket.gethostname()}_{secrets.token_hex(4)}"

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        client = AsyncClient(config=config, field_manager="smesh-controller")
        elector = LeaderElector(client, args.namespace, "smesh-controller", identity)
        controller = Controller(lambda: KubeApi(config), client, settings, metrics)
        logging.getLogger("smesh.controller").info(
            "smesh controller %s (pid %d)", identity, os.getpid()
        )
        try:
            await run(elector, controller, stop)
        finally:
            await client.close()

    asyncio.run(main())
    return 0
