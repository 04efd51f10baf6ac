"""Starting a candidate: the harness's command line, then bind, fork workers, say ready.

``python -m smesh.bench.models MODEL --role client|server --listen IP:PORT
--target IP:PORT --cert CERT.pem --key KEY.pem --ca CA.pem [--loop default|uvloop]
[--workers N]``. ``ready`` is printed on stdout once every listening socket is bound;
SIGTERM or SIGINT ends the proxy with status 0.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from smesh.bench.models.common import (
    ASYNCIO_MODELS,
    MODELS,
    ModelError,
    Options,
    listen,
    loop_factory,
    parse_address,
    raise_fd_limit,
    tls_context,
)
from smesh.bench.models.workers import Serve, supervise

MAX_WORKERS = 64


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m smesh.bench.models",
        description="One proxy of a candidate pair: plain TCP <-> mutual TLS 1.3.",
    )
    p.add_argument("model", choices=MODELS)
    p.add_argument(
        "--role",
        choices=("client", "server"),
        required=True,
        help="client: plain in, TLS out (node-1); server: TLS in, plain out",
    )
    p.add_argument("--listen", type=_address, required=True, metavar="IP:PORT")
    p.add_argument("--target", type=_address, required=True, metavar="IP:PORT")
    p.add_argument("--cert", type=Path, required=True, help="this proxy's certificate (PEM)")
    p.add_argument("--key", type=Path, required=True, help="its private key (PEM)")
    p.add_argument("--ca", type=Path, required=True, help="CA certificate to verify the peer")
    p.add_argument(
        "--loop",
        choices=("default", "uvloop"),
        default="default",
        help="event loop of the asyncio models",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port with SO_REUSEPORT (default 1)",
    )
    return p  # fmt: skip


def parse(argv: list[str] | None = None) -> Options:
    p = parser()
    args = p.parse_args(argv)
    if args.loop != "default" and args.model not in ASYNCIO_MODELS:
        p.error(f"--loop applies to the asyncio models ({', '.join(sorted(ASYNCIO_MODELS))})")
    if not 1 <= args.workers <= MAX_WORKERS:
        p.error(f"--workers must be between 1 and {MAX_WORKERS}")
    return Options(
        model=args.model,
        role=args.role,
        listen=args.listen,
        target=args.target,
        cert=args.cert,
        key=args.key,
        ca=args.ca,
        loop=args.loop,
        workers=args.workers,
    )


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"{opts.model} {opts.role}[%(process)d]: %(message)s",
    )
    try:
        serve: Serve = importlib.import_module(f"smesh.bench.models.{opts.model}").serve
        if opts.model in ASYNCIO_MODELS:
            loop_factory(opts.loop)  # a missing uvloop is an error now, not after `ready`
        ctx = tls_context(opts)
        raise_fd_limit()
        listeners = [listen(opts.listen, opts.workers > 1) for _ in range(opts.workers)]
    except ModelError as exc:
        print(f"python -m smesh.bench.models: error: {exc}", file=sys.stderr)
        return 1
    if opts.workers == 1:
        serve(opts, ctx, listeners[0], _ready)
        return 0
    return supervise(serve, opts, ctx, listeners)
