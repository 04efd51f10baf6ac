"""`smesh agent`: the node agent (what a Kubernetes DaemonSet runs, one per node)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smesh.agent import logs
from smesh.agent.config import load


def configure(agent: argparse.ArgumentParser) -> None:
    agent.add_argument("--config", type=Path, required=True, help="agent YAML configuration")
    agent.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set admin.port=15001 (also: SMESH__ADMIN__PORT=15001)",
    )
    agent.add_argument("--log-format", choices=["json", "text"], help="override logging.format")
    agent.set_defaults(func=_agent)


def _agent(args: argparse.Namespace) -> int:
    overrides = list(args.set)
    if args.log_format:
        overrides.append(f"logging.format={args.log_format}")
    config = load(args.config, overrides)  # a bad file stops here, with one line naming the field
    logs.configure(config.logging.format, config.logging.level)
    from smesh.agent.node import Agent  # noqa: PLC0415 - loads BPF and TLS machinery
    from smesh.agent.wiring import MeshWiring  # noqa: PLC0415
    from smesh.dataplane import loop  # noqa: PLC0415

    return loop.run(Agent(config, MeshWiring(config)).run(), config.event_loop)
