"""The `smesh` command: subcommands only parse their arguments and call the packages.

Each subcommand lives in its own module with a ``configure(parser)`` function; adding one
means adding its name and one-line help to :data:`COMMANDS`. Only the module of the command
being run is imported, so ``smesh lab exec`` starts without loading TLS, BPF or the agent.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from smesh import __version__
from smesh.cli.options import add_globals, check_lab_env, spread_globals
from smesh.cli.output import stdout_closed
from smesh.errors import SmeshError

COMMANDS: dict[str, str] = {
    "lab": "a virtual cluster of namespace pods on this machine",
    "agent": "run the node agent",
    "status": "workloads, certificates and connections of running agents",
    "demo": "pod-to-pod traffic as an attacker on the wire sees it, without and with smesh",
    "ca": "the certificate authority and its signing service",
    "controller": "sign workload certificates requested through the Kubernetes CSR API",
    "policy": "authorization policy",
    "capture": "redirect pods' outbound TCP to the node proxy (eBPF or nftables)",
    "trace": "stream capture events: which connect was captured or left alone",
    "flows": "every connection of every node as it opens and closes, with its verdict",
    "bench": "measure smesh against direct TCP, stunnel and haproxy, side by side",
    "cni": "chain smesh-cni into a node's CNI configuration, or remove it",
    "install": "check an installation of smesh on a cluster",
    "check": "can this machine run a smesh agent? (kernel, BPF, cgroups, privileges)",
    "completion": "print a bash or zsh completion script for smesh",
}


def build_parser(
    argv: Sequence[str] | None = None, *, every: bool = False
) -> argparse.ArgumentParser:
    """The parser of *argv*'s command; with *every*, of all commands (completion scripts)."""
    parser = argparse.ArgumentParser(
        prog="smesh", description="Transparent mutual TLS between pods, captured by eBPF."
    )
    parser.add_argument("--version", action="version", version=f"smesh {__version__}")
    add_globals(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    words = list(sys.argv[1:] if argv is None else argv)
    chosen = next((w for w in words if not w.startswith("-")), None)
    for name, summary in COMMANDS.items():
        sub = subparsers.add_parser(name, help=summary, description=summary)
        if every or name == chosen:
            importlib.import_module(f"smesh.cli.{name}").configure(sub)
    spread_globals(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _run(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe is caught below
    except BrokenPipeError:
        if not stdout_closed():
            raise  # a socket's, not the reader of our output going away: a real error
        # `smesh ... | head -1`: the reader is gone. End as a CLI killed by SIGPIPE would,
        # quietly; the agent itself keeps Python's SIGPIPE handling (SIG_IGN), so a peer's
        # closed socket is an exception there, never a signal that ends it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        check_lab_env(args)
        return int(args.func(args) or 0)
    except SmeshError as exc:
        print(f"smesh: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
