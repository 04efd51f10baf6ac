"""`smesh cni install|uninstall`: chain smesh-cni into the node's CNI configuration.

What the agent DaemonSet runs: ``install`` as an init container (idempotent), ``uninstall
--only-if-daemonset-deleted`` as the agent's preStop hook, so the plugin is removed only
when smesh itself is uninstalled, never on an upgrade (docs/kubernetes.md, "Install").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from smesh.kubernetes import cni

DEFAULT_CONF_DIR = Path("/etc/cni/net.d")
DEFAULT_BIN_DIR = Path("/opt/cni/bin")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cni_command", metavar="ACTION", required=True)
    install = sub.add_parser("install", help="install smesh-cni and chain it (idempotent)")
    uninstall = sub.add_parser("uninstall", help="unchain smesh-cni and remove it")
    for action in (install, uninstall):
        action.add_argument(
            "--conf-dir", type=Path, default=DEFAULT_CONF_DIR, help="CNI configuration directory"
        )
        action.add_argument(
            "--bin-dir", type=Path, default=DEFAULT_BIN_DIR, help="CNI plugin directory"
        )
    install.add_argument(
        "--python",
        default="/usr/bin/python3",
        help="the node's Python (>= 3.11) that runs the plugin (default %(default)s)",
    )
    install.add_argument(
        "--agent-socket", default=cni.DEFAULT_SOCKET, help="the agent's hand-off socket"
    )
    install.add_argument(
        "--timeout",
        type=float,
        default=cni.DEFAULT_TIMEOUT,
        help="seconds an ADD waits for the agent (default %(default)s)",
    )
    install.set_defaults(func=_install)
    uninstall.add_argument(
        "--only-if-daemonset-deleted",
        metavar="NAMESPACE/NAME",
        help="do nothing unless this DaemonSet is gone or being deleted (the agent's preStop)",
    )
    uninstall.add_argument(
        "--kubeconfig", type=Path, help="for the DaemonSet check (default: in-cluster)"
    )
    uninstall.set_defaults(func=_uninstall)


def _install(args: argparse.Namespace) -> int:
    from smesh.install import cni_chain, cniapp  # noqa: PLC0415
    from smesh.install.errors import InstallError  # noqa: PLC0415

    if not 0 < args.timeout <= cni.MAX_TIMEOUT:
        raise InstallError(
            f"--timeout {args.timeout:g}: must be in (0, {cni.MAX_TIMEOUT:g}] seconds"
        )
    settings = cni_chain.PluginSettings(args.agent_socket, args.timeout)
    change = cni_chain.install(args.conf_dir, args.bin_dir, cniapp.build(args.python), settings)
    print(change.describe("install"))
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from smesh.install import cni_chain  # noqa: PLC0415

    if args.only_if_daemonset_deleted:
        from smesh.install import cluster  # noqa: PLC0415
        from smesh.install.errors import InstallError  # noqa: PLC0415

        namespace, sep, name = args.only_if_daemonset_deleted.partition("/")
        if not (sep and namespace and name):
            raise InstallError(
                f"--only-if-daemonset-deleted {args.only_if_daemonset_deleted!r}: "
                "expected NAMESPACE/NAME, e.g. smesh-system/smesh-agent"
            )
        found = cluster.read_daemonset(args.kubeconfig, namespace, name)
        if not cluster.daemonset_going(found):
            print(
                f"smesh-cni uninstall: DaemonSet {namespace}/{name} is still there (an "
                "update or a restart): smesh-cni stays chained"
            )
            return 0
    print(cni_chain.uninstall(args.conf_dir, args.bin_dir).describe("uninstall"))
    return 0
