"""`smesh lab up|down|status|exec`: the virtual cluster's command-line contract."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from smesh.cli.options import add_lab
from smesh.cli.output import add_output, show, stdout_closed, table, wants_json
from smesh.lab import api
from smesh.lab.errors import LabError


def configure(lab: argparse.ArgumentParser) -> None:
    verbs = lab.add_subparsers(dest="verb", metavar="VERB", required=True)

    def named(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        _name_option(parser)
        return parser

    up = named(verbs.add_parser("up", help="build the cluster"))
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    up.add_argument("--pods-per-node", type=int, default=2, help="pods on each node (default 2)")
    up.add_argument("--no-mesh", action="store_true", help="plain traffic: smesh switched off")
    up.add_argument(
        "--kubernetes",
        action="store_true",
        help="a Kubernetes cluster: control plane, kubelets, pods from the API (no static pods)",
    )
    up.add_argument(
        "--identity",
        action="append",
        default=[],
        metavar="POD=NS/SA",
        help="a pod's Kubernetes namespace and service account (default: default/POD)",
    )
    up.add_argument(
        "--install",
        choices=list(api.INSTALL_MODES),
        metavar="{chart,processes}",
        help="how the mesh gets into a --kubernetes lab: chart (its default: the Helm chart "
        "applied with kubectl, agent DaemonSet and controller as pods, certificates through "
        "CSRs) or processes (agents as lab processes beside the lab's signer: "
        "restart-agent/stop-agent, agent.log and pids in the lab's state; the only mode "
        "without --kubernetes)",
    )
    up.add_argument(
        "--set",
        dest="chart_values",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --install chart: a Helm chart value, as `helm template --set` takes it "
        "(over the lab's own values), e.g. --set agent.config.identity.rotationSpread=5s",
    )
    up.add_argument(
        "--service-cidr",
        metavar="CIDR",
        help="the Services' ClusterIP range of a --kubernetes lab (default 198.18.255.0/24): "
        "inside 198.18.0.0/16, above the nodes' /24s and holding the DNS Service's "
        "198.18.255.10, e.g. 198.18.240.0/20 for 4,000 Services",
    )
    up.add_argument("--policy", type=Path, help="authorization policy file for the agents")
    up.add_argument(
        "--agent-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an agent setting, e.g. --agent-set timeouts.request=1s",
    )
    up.set_defaults(func=_up)

    down = named(verbs.add_parser("down", help="remove everything the lab made"))
    down.set_defaults(func=_down)

    status = named(verbs.add_parser("status", help="nodes, pods and agents"))
    status.set_defaults(func=_status)

    restart = named(
        verbs.add_parser(
            "restart-agent",
            help="start a node's agent again (a running one hands the node over to it)",
        )
    )
    restart.add_argument("node", metavar="NODE", help="e.g. node-1")
    restart.set_defaults(func=_restart, verb="restart-agent")

    upgrade = named(
        verbs.add_parser(
            "upgrade-agent",
            help="start a new agent for a node first; it takes the node over from the "
            "running one, which serves its open connections until they end",
        )
    )
    upgrade.add_argument("node", metavar="NODE", help="e.g. node-1")
    upgrade.set_defaults(func=_restart, verb="upgrade-agent")

    stop = named(verbs.add_parser("stop-agent", help="stop a node's agent (capture stays)"))
    stop.add_argument("node", metavar="NODE", help="e.g. node-1")
    stop.set_defaults(func=_stop_agent)

    plane = named(
        verbs.add_parser(
            "restart-control-plane",
            help="restart one component of a --kubernetes lab's control plane",
        )
    )
    plane.add_argument(
        "component",
        metavar="COMPONENT",
        choices=["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"],
        help="etcd, kube-apiserver, kube-controller-manager or kube-scheduler",
    )
    plane.add_argument(
        "--loopback-only",
        action="store_true",
        help="kube-apiserver: listen on 127.0.0.1 in NAME.control only (an outage for the "
        "nodes; reach it with `lab kubectl -- --server https://127.0.0.1:6443 ...`)",
    )
    plane.set_defaults(func=_restart_control_plane)

    kubelet = named(verbs.add_parser("restart-kubelet", help="restart a node's lab kubelet"))
    kubelet.add_argument("node", metavar="NODE", help="e.g. node-1")
    kubelet.set_defaults(func=_restart_kubelet)

    run = named(verbs.add_parser("exec", help="run a command inside a pod (or node)"))
    run.add_argument(
        "member",
        metavar="POD",
        help="pod (or node) name, e.g. pod-1; NAMESPACE/POD for a Kubernetes lab's pods",
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    run.set_defaults(func=_exec)

    kubectl = named(
        verbs.add_parser("kubectl", help="run kubectl against a --kubernetes lab's API server")
    )
    kubectl.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- ARGS...")
    kubectl.set_defaults(func=_kubectl)

    listing = verbs.add_parser("list", help="the labs on this machine")
    listing.set_defaults(func=_list)

    _policy_verb(named(verbs.add_parser("policy", help=_policy.__doc__)))

    logs = named(verbs.add_parser("logs", help="a node's agent log (JSON lines)"))
    logs.add_argument("node", metavar="NODE", help="e.g. node-1")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing what the agent logs"
    )
    logs.set_defaults(func=_logs)

    # -o json on every verb that prints a result (up: the lab's status document, as `lab
    # status -o json`); exec, kubectl and logs print what another program writes
    for printing in (up, down, status, restart, upgrade, stop, plane, kubelet, listing):
        add_output(printing)


def _policy_verb(policy: argparse.ArgumentParser) -> None:
    policy.add_argument("file", type=Path, metavar="FILE", help="a policy file (docs/policy.md)")
    add_output(policy)
    policy.set_defaults(func=_policy)


def _name_option(parser: argparse.ArgumentParser) -> None:
    # dest `name`, as the lab verbs always had; spelled --lab as on every other command
    add_lab(parser, dest="name")


def exec_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split what follows POD into (exec's own options, the command).

    argparse hands everything after POD to the command, so `lab exec pod-1 --lab x --
    curl ...` would run `--lab` in the default lab; options written there, before the
    `--`, are taken as exec's. A command's own `--` (`grep -- -x`) is left alone.
    """
    if argv[:1] == ["--"]:
        return [], argv[1:]
    if not argv or not argv[0].startswith("-"):
        return [], argv
    if "--" not in argv:
        raise LabError(f"{argv[0]!r} after POD: end exec's options with `--` before the command")
    split = argv.index("--")
    return argv[:split], argv[split + 1 :]


def _exec_options(options: list[str], args: argparse.Namespace) -> None:
    late = argparse.ArgumentParser(prog="smesh lab exec", add_help=False)
    _name_option(late)
    _, unknown = late.parse_known_args(options, args)
    if unknown:
        raise LabError(f"lab exec takes only --lab before `--`, not {' '.join(unknown)!r}")


def _up(args: argparse.Namespace) -> int:
    topo = api.up(
        args.name,
        args.nodes,
        args.pods_per_node,
        mesh=not args.no_mesh,
        identities=args.identity,
        policy=args.policy,
        agent_overrides=args.agent_set,
        kubernetes=args.kubernetes,
        install=args.install,
        chart_values=args.chart_values,
        service_cidr=args.service_cidr,
    )
    if wants_json(args):
        show(args, api.status(topo.name))
        return 0
    mode = "mesh on" if topo.mesh else "mesh off (--no-mesh)"
    if topo.kubernetes:
        if topo.mesh:
            chart = api.install_mode(args.install, kubernetes=True, mesh=True) == "chart"
            mode += ", agents as " + ("pods from the chart" if chart else "lab processes")
        print(
            f"lab {topo.name!r} is up: a Kubernetes cluster of {len(topo.nodes)} nodes, {mode}; "
            f"use `smesh lab kubectl --lab {topo.name} -- ...`"
        )
    else:
        print(f"lab {topo.name!r} is up: {len(topo.nodes)} nodes, {len(topo.pods)} pods, {mode}")
    _print_tables(api.status(topo.name))
    return 0


def _down(args: argparse.Namespace) -> int:
    existed = api.down(args.name)
    show(
        args,
        {"lab": args.name, "removed": existed},
        f"lab {args.name!r} " + ("removed" if existed else "was not up; nothing to remove"),
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    doc = api.status(args.name)
    if wants_json(args):
        show(args, doc)
    else:
        _print_tables(doc)
    return 0


def _restart(args: argparse.Namespace) -> int:
    process = api.restart_agent(args.name, args.node, args.verb)
    lingering = api.status(args.name)
    old = next(n["agents_lingering"] for n in lingering["nodes"] if n["name"] == args.node)
    done = "restarted" if args.verb == "restart-agent" else "upgraded"
    show(
        args,
        {"node": args.node, "pid": process.pid, "lingering": old},
        f"agent of {args.node} {done} (pid {process.pid}) and ready"
        + (f"; serving their open connections: pid {', '.join(map(str, old))}" if old else ""),
    )
    return 0


def _stop_agent(args: argparse.Namespace) -> int:
    stopped = api.stop_agent(args.name, args.node)
    show(
        args,
        {"node": args.node, "stopped": stopped},
        f"agent of {args.node} stopped; its pods stay captured (connects fail closed)"
        if stopped
        else f"agent of {args.node} was not running",
    )
    return 0


def _restart_control_plane(args: argparse.Namespace) -> int:
    process = api.restart_control_plane(args.name, args.component, loopback_only=args.loopback_only)
    show(
        args,
        {"component": args.component, "pid": process.pid},
        f"{args.component} restarted (pid {process.pid}) and healthy",
    )
    return 0


def _restart_kubelet(args: argparse.Namespace) -> int:
    process = api.restart_kubelet(args.name, args.node)
    show(
        args,
        {"node": args.node, "pid": process.pid},
        f"kubelet of {args.node} restarted (pid {process.pid})",
    )
    return 0


def _exec(args: argparse.Namespace) -> int:
    options, argv = exec_command(list(args.argv))
    _exec_options(options, args)
    api.exec_argv(args.name, args.member, argv)
    return 0  # not reached: exec replaced this process


def _kubectl(args: argparse.Namespace) -> int:
    options, argv = exec_command(list(args.argv))
    _exec_options(options, args)
    api.kubectl_argv(args.name, argv)
    return 0  # not reached: exec replaced this process


def _print_tables(doc: dict[str, Any]) -> None:
    # A chart lab's agents are pods (--install chart): named as pods, never as pids.
    pods = doc.get("install") == "chart"
    print(
        table(
            ["NODE", "NETNS", "IP", "POD CIDR", "AGENT POD" if pods else "AGENT PID", "AGENT"],
            [
                [
                    n["name"],
                    n["netns"],
                    n["ip"],
                    n["pod_cidr"],
                    (n.get("agent_pod") if pods else n["agent_pid"]) or "-",
                    n["agent_health"]
                    + "".join(f" (+{pid} finishing)" for pid in n.get("agents_lingering", [])),
                ]
                for n in doc["nodes"]
            ],
        )
    )
    print()
    if doc.get("kubernetes"):
        print(
            table(
                ["NAMESPACE/POD", "NODE", "IP", "IPV6", "PHASE", "NETNS"],
                [
                    [
                        f"{p['namespace']}/{p['name']}",
                        p["node"] or "-",
                        p["ip"] or "-",
                        p["ip6"] or "-",
                        p["phase"] + (" (deleting)" if p["deleting"] else ""),
                        p["netns"] or ("(node)" if p["host_network"] else "-"),
                    ]
                    for p in doc["kubernetes_pods"]
                ],
            )
        )
        return
    print(
        table(
            ["POD", "NODE", "IP", "IPV6", "IDENTITY", "MESHED", "NETNS", "CGROUP"],
            [
                [
                    p["name"],
                    p["node"],
                    p["ip"],
                    p["ip6"],
                    f"{p['namespace']}/{p['service_account']}",
                    "yes" if p["meshed"] else "no",
                    p["netns"],
                    p["cgroup"],
                ]
                for p in doc["pods"]
            ],
        )
    )


def _list(args: argparse.Namespace) -> int:
    from smesh.lab import inventory  # noqa: PLC0415

    found = inventory.labs()
    if wants_json(args):
        show(args, [lab.as_dict() for lab in found])
        return 0
    if not found:
        print("no labs here; start one with `smesh lab up`")
        return 0

    def shown(value: object) -> str:
        return (
            "-"
            if value is None
            else ("yes" if value is True else "no" if value is False else str(value))
        )

    rows = [
        [
            lab.name,
            lab.phase,
            shown(lab.nodes),
            shown(lab.kubernetes),
            ("off" if lab.mesh is False else shown(lab.install)),
            inventory.age_text(lab.age()),
        ]
        for lab in found
    ]
    print(table(["NAME", "PHASE", "NODES", "KUBERNETES", "MESH", "AGE"], rows))
    return 0


def _logs(args: argparse.Namespace) -> int:
    from smesh.lab import logs  # noqa: PLC0415

    path = logs.agent_log(args.name, args.node)
    sys.stdout.flush()
    # --follow | head -1: nothing new may come for a long time, so ask whether the reader
    # is still there rather than wait for a write to fail
    logs.copy(path, sys.stdout.buffer, follow=args.follow, stop=stdout_closed)
    if stdout_closed():
        raise BrokenPipeError  # the entry point ends as a closed pipe ends a command
    return 0


def _policy(args: argparse.Namespace) -> int:
    """install a policy file in a process lab and reload every agent, reporting each
    agent's verdict (exit 1 if any did not load it)"""
    from smesh.lab import policy  # noqa: PLC0415

    expected, verdicts = policy.install(args.name, args.file)
    if wants_json(args):
        doc = {
            "file": str(args.file),
            "digest": expected,
            "agents": [v.as_dict() for v in verdicts],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(f"{args.file}: valid ({expected}); installed as lab {args.name!r}'s policy")
        for v in verdicts:
            print(
                f"{v.node}: "
                + (f"loaded {(v.digest or '')[:19]}" if v.loaded else f"refused: {v.error}")
            )
    refused = [v.node for v in verdicts if not v.loaded]
    if refused:
        print(
            f"smesh: error: {len(refused)} of {len(verdicts)} agents did not load the policy "
            f"({', '.join(refused)})",
            file=sys.stderr,
        )
        return 1
    return 0
