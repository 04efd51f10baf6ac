"""`smesh ca init|inspect|rotate|serve`: the certificate authority and its signing service."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import signal
from pathlib import Path
from typing import Any

from smesh.cli.options import add_log_format, configure_logs
from smesh.cli.output import add_output, table, wants_json
from smesh.identity.ca import DEFAULT_DIR, CertificateAuthority
from smesh.identity.service import SigningService
from smesh.identity.signer import LiveEntitlements, LocalSigner
from smesh.identity.spiffe import SpiffeId
from smesh.kubernetes.errors import KubernetesError

log = logging.getLogger("smesh.signer")


def configure(ca: argparse.ArgumentParser) -> None:
    verbs = ca.add_subparsers(dest="verb", metavar="VERB", required=True)

    def with_dir(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help=f"CA directory (default {DEFAULT_DIR})"
        )
        return parser

    def with_cluster(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--kubeconfig",
            type=Path,
            help="act on the Secret smesh-ca of this cluster (for `smesh controller`), not --dir",
        )
        parser.add_argument("--namespace", default="smesh-system", help="with --kubeconfig")

    init = with_dir(verbs.add_parser("init", help="create a root CA (ECDSA P-256)"))
    init.add_argument("--trust-domain", default="cluster.local")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    with_cluster(init)
    init.set_defaults(func=_init)

    inspect = with_dir(verbs.add_parser("inspect", help="roots and issued certificates"))
    add_output(inspect)
    inspect.set_defaults(func=_inspect)

    rotate = with_dir(verbs.add_parser("rotate", help="rotate the root in three steps"))
    step = rotate.add_mutually_exclusive_group()
    step.add_argument("--activate", action="store_true", help="step 2: the newest root signs")
    step.add_argument("--retire-old", action="store_true", help="step 3: drop old roots")
    rotate.add_argument("--force", action="store_true", help="retire even with unexpired leaves")
    rotate.add_argument(
        "--trust-domain", default="cluster.local", help="with --kubeconfig: the new root's"
    )
    with_cluster(rotate)
    rotate.set_defaults(func=_rotate)

    serve = with_dir(verbs.add_parser("serve", help="run the signing service for node agents"))
    serve.add_argument("--socket", type=Path, required=True, help="Unix socket to listen on")
    who = serve.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--workloads", type=Path, help="workload directory: who runs on which node (the lab)"
    )
    who.add_argument(
        "--kubeconfig",
        type=Path,
        help="kubeconfig of a Kubernetes API server: its pods say who runs on which node",
    )
    serve.add_argument("--ttl", default="24h", help="workload certificate lifetime (default 24h)")
    add_log_format(serve)
    serve.set_defaults(func=_serve)


def _init(args: argparse.Namespace) -> int:
    if args.kubeconfig is not None:
        return _init_cluster(args)
    ca = CertificateAuthority.init(args.dir, args.trust_domain, force=args.force)
    print(f"CA for trust domain {ca.trust_domain} created in {args.dir} (root {ca.active.id})")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    doc = CertificateAuthority.load(args.dir).describe()
    if wants_json(args):
        print(json.dumps(doc, indent=2))
        return 0
    print(f"trust domain {doc['trust_domain']}  ({doc['directory']})\n")
    print(
        table(
            ["ROOT", "STATE", "EXPIRES"],
            [[r["id"], r["state"], r["not_after"]] for r in doc["roots"]],
        )
    )
    print()
    rows = [
        [
            c["identity"],
            c["serial"][:16],
            c["node"],
            c["not_after"],
            "expired" if c["expired"] else "valid",
        ]
        for c in doc["issued"]
    ]
    print(
        table(["IDENTITY", "SERIAL", "NODE", "EXPIRES", "STATUS"], rows)
        if rows
        else "no certificates issued"
    )
    return 0


def _rotate(args: argparse.Namespace) -> int:
    if args.kubeconfig is not None:
        return _rotate_cluster(args)
    ca = CertificateAuthority.load(args.dir)
    if args.activate:
        root = ca.activate_newest()
        print(f"root {root.id} now signs; the previous root stays trusted until retired")
    elif args.retire_old:
        retired = ca.retire_old(force=args.force)
        print(f"retired roots: {', '.join(retired) or 'none'}")
    else:
        root = ca.rotate()
        print(
            f"root {root.id} added to the trust bundle; once every agent has renewed, run "
            f"`smesh ca rotate --activate --dir {args.dir}`"
        )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from smesh.agent.config import parse_duration  # noqa: PLC0415

    configure_logs(args)
    ca = CertificateAuthority.load(args.dir)
    ttl = dt.timedelta(seconds=float(parse_duration(args.ttl)))
    if args.kubeconfig is not None:
        return _serve_kubernetes(args, ca, ttl)

    from smesh.agent.workloads import DirectorySource  # noqa: PLC0415

    source = DirectorySource(args.workloads)

    def pairs() -> list[tuple[str, SpiffeId]]:
        return [
            (w.node, SpiffeId(ca.trust_domain, w.namespace, w.service_account))
            for w in source.scan().workloads.values()
        ]

    service = SigningService(LocalSigner(ca, LiveEntitlements(pairs), ttl))

    async def run() -> None:
        stop = _stop_on_signals()
        await service.start(args.socket)
        log.info("signing service for %s on %s", ca.trust_domain, args.socket)
        await stop.wait()
        await service.close()

    asyncio.run(run())
    return 0


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _serve_kubernetes(args: argparse.Namespace, ca: CertificateAuthority, ttl: dt.timedelta) -> int:
    """The signer with entitlements from the API server's pods (all namespaces, all nodes).

    It starts serving only once the first pod list is in: before that every request would
    be refused as "no such workload". If the pod watch ever ends with an error the signer
    stops too, since serving on with a table that no longer follows the API would keep
    entitlements that should have been revoked.
    """
    from smesh.kubernetes.client import PODS, KubeApi  # noqa: PLC0415
    from smesh.kubernetes.entitlements import PodEntitlements  # noqa: PLC0415
    from smesh.kubernetes.informer import Informer  # noqa: PLC0415

    entitlements = PodEntitlements(ca.trust_domain)
    service = SigningService(LocalSigner(ca, entitlements, ttl))

    async def run() -> None:
        stop = _stop_on_signals()
        api = KubeApi.from_kubeconfig(args.kubeconfig)
        follow = asyncio.create_task(entitlements.follow(Informer(api, PODS)), name="pods")
        stopped = asyncio.create_task(stop.wait())
        try:
            log.info("listing the pods of %s", api.server)
            synced = asyncio.create_task(entitlements.wait_synced())
            await asyncio.wait({synced, stopped, follow}, return_when=asyncio.FIRST_COMPLETED)
            synced.cancel()
            if follow.done():
                _watch_ended(follow)
            if stopped.done():
                return
            await service.start(args.socket)
            log.info(
                "signing service for %s on %s, entitlements from the pods of %s",
                ca.trust_domain,
                args.socket,
                api.server,
            )
            await asyncio.wait({stopped, follow}, return_when=asyncio.FIRST_COMPLETED)
            await service.close()
            if follow.done():
                _watch_ended(follow)
        finally:
            for task in (follow, stopped):
                task.cancel()
            await asyncio.gather(follow, stopped, return_exceptions=True)
            await api.aclose()

    asyncio.run(run())
    return 0


def _watch_ended(follow: asyncio.Task[None]) -> None:
    follow.result()  # raises what ended it, if anything did
    raise KubernetesError("the watch of the API server's pods ended; the signer stops with it")


def _cluster_client(args: argparse.Namespace) -> Any:
    from lightkube import AsyncClient  # noqa: PLC0415

    from smesh.kubernetes.client import load_config  # noqa: PLC0415

    return AsyncClient(config=load_config(args.kubeconfig), field_manager="smesh-ca")


def _init_cluster(args: argparse.Namespace) -> int:
    from smesh.controller import secretca, secretio  # noqa: PLC0415

    async def run() -> bool:
        client = _cluster_client(args)
        try:
            data = secretca.new_data(args.trust_domain)
            if args.force:
                await secretio.update_secret(client, args.namespace, lambda _: data)
                return True
            return await secretio.create_secret(client, args.namespace, data)
        finally:
            await client.close()

    where = f"{args.namespace}/{secretca.SECRET_NAME}"
    if asyncio.run(run()):
        print(f"CA for trust domain {args.trust_domain} created in the Secret {where}")
    else:
        print(f"the Secret {where} exists; kept it (pass --force to replace it)")
    return 0


def _rotate_cluster(args: argparse.Namespace) -> int:
    from smesh.controller import secretca, secretio  # noqa: PLC0415
    from smesh.controller.decide import MAX_LIFETIME  # noqa: PLC0415
    from smesh.identity.certs import now  # noqa: PLC0415

    if args.activate:
        step = lambda d: secretca.activate_rotation(d, now(), MAX_LIFETIME)  # noqa: E731
    elif args.retire_old:
        step = lambda d: secretca.retire_old_roots(d, now(), args.force)  # noqa: E731
    else:

        def step(data: secretca.SecretData) -> secretca.SecretData:
            return secretca.stage_rotation(data, args.trust_domain)

    async def run() -> None:
        client = _cluster_client(args)
        try:
            await secretio.update_secret(client, args.namespace, step)
        finally:
            await client.close()

    asyncio.run(run())
    flags = f"--kubeconfig {args.kubeconfig} --namespace {args.namespace}"
    if args.activate:
        print(
            "the new root signs from now on; the old one stays in the bundle. After 24 h "
            f"(the longest certificate lifetime) run `smesh ca rotate --retire-old {flags}`"
        )
    elif args.retire_old:
        print("only the signing root is left in the trust bundle")
    else:
        print(
            "a new root joined the trust bundle (ConfigMap smesh-trust-bundle, written by the "
            "controller). Agents follow it within seconds and re-read it every 5 minutes; "
            "after that run "
            f"`smesh ca rotate --activate {flags}`"
        )
    return 0
