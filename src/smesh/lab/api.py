"""The lab's operations: up, down, status and exec (the CLI only parses and calls these)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from smesh.lab import builder, state, topology
from smesh.lab.errors import CommandNotFound, InvalidLabSpec, LabError, LabExists, LabNotFound
from smesh.lab.topology import Pod, Topology
from smesh.linux import cgroups, netns, privileges


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """Serialise up/down of one lab across processes."""
    state.STATE_ROOT.mkdir(parents=True, exist_ok=True)
    fd = os.open(state.STATE_ROOT / f".{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _preflight(action: str) -> Path:
    privileges.require(action)
    return cgroups.v2_root()


def _leftovers(name: str, cgroup_root: Path) -> list[str]:
    found = [ns for ns in netns.list_names() if ns.startswith(f"{name}.")]
    if (cgroup_root / f"smesh-lab-{name}").exists():
        found.append(f"cgroup smesh-lab-{name}")
    if state.directory(name).exists():
        found.append("saved state")
    return found


#: ``lab up --install`` values; ``lab`` is the old name of ``processes``.
INSTALL_MODES = ("chart", "processes", "lab")


def install_mode(install: str | None, *, kubernetes: bool, mesh: bool) -> str:
    """``chart`` or ``processes``: how smesh gets into a lab (``lab up --install``).

    Unset, a meshed Kubernetes lab installs the chart, as a cluster admin would; every other
    lab (no API server to apply it to, or no mesh to install) runs process agents, or none.
    """
    if install is None:
        return "chart" if kubernetes and mesh else "processes"
    if install not in INSTALL_MODES:
        raise InvalidLabSpec(f"--install {install!r}: choose chart or processes")
    if install == "chart" and not (kubernetes and mesh):
        raise InvalidLabSpec("--install chart needs --kubernetes and the mesh (no --no-mesh)")
    return "processes" if install == "lab" else install


def up(
    name: str = topology.DEFAULT_NAME,
    nodes: int = 2,
    pods_per_node: int = 2,
    *,
    mesh: bool = True,
    identities: Sequence[str] = (),
    policy: Path | None = None,
    agent_overrides: Sequence[str] = (),
    kubernetes: bool = False,
    install: str | None = None,
    chart_values: Sequence[str] = (),
    service_cidr: str | None = None,
) -> Topology:
    """Build lab *name*; on any failure remove what was built and re-raise.

    With *kubernetes* the lab is a cluster: a control plane in ``NAME.control``, a kubelet per
    node, and no static pods (*pods_per_node* is ignored): pods come from the API server.
    *install* says how the mesh gets there (:func:`install_mode`): ``chart`` (the default of
    a meshed Kubernetes lab: smesh installed from its Helm chart, the agents and the
    controller run as pods; :mod:`smesh.lab.install`) or ``processes`` (agents as lab
    processes beside the lab's signer, which ``restart_agent``/``stop_agent`` act on).
    *chart_values* (``KEY=VALUE``) are passed to ``helm template --set`` over the
    lab's own values. *service_cidr* is the Services' range (:func:`topology.service_cidr`).
    """
    explicit = install is not None
    install = install_mode(install, kubernetes=kubernetes, mesh=mesh)
    if install == "chart" and (policy is not None or agent_overrides):
        chosen = "--install chart" if explicit else "--kubernetes (which installs the chart)"
        raise InvalidLabSpec(
            f"--policy and --agent-set configure process agents; with {chosen} use "
            "AuthorizationPolicy objects and the chart's values, or pass --install processes"
        )
    if chart_values and install != "chart":
        raise InvalidLabSpec("--set sets the Helm chart's values: it needs --install chart")
    for value in chart_values:
        if "=" not in value or not value.partition("=")[0].strip():
            raise InvalidLabSpec(f"--set {value!r}: expected KEY=VALUE (a chart value)")
    if kubernetes and identities:
        raise InvalidLabSpec(
            "--identity names static pods; a --kubernetes lab has none (pods come from the API)"
        )
    if policy is not None:
        from smesh.policy import load as load_policy  # noqa: PLC0415

        load_policy(policy)  # refuse a bad policy before building anything
    if install == "chart":
        from smesh.lab import install as chart  # noqa: PLC0415

        chart.require_helm()
    parsed = [topology.parse_identity(text) for text in identities]
    topo = topology.plan(
        name,
        nodes,
        pods_per_node,
        mesh,
        {p: (n, s) for p, n, s in parsed},
        kubernetes=kubernetes,
        service_range=service_cidr,
    )
    cgroup_root = _preflight("smesh lab up")
    with _locked(name):
        if _leftovers(name, cgroup_root):
            raise LabExists(f"lab {name!r} already exists; run `smesh lab down --lab {name}` first")
        lab = state.LabState(
            name=name,
            nodes=nodes,
            pods_per_node=pods_per_node,
            mesh=mesh,
            identities={p: [n, s] for p, n, s in parsed},
            settings={"agent_overrides": list(agent_overrides), "install": install},
            kubernetes=kubernetes,
        )
        if service_cidr is not None:
            lab.settings["service_cidr"] = str(topo.service_cidr)
        state.save(lab)
        try:
            builder.build(topo, cgroup_root)
            publish_workloads(topo, cgroup_root)
            if kubernetes:
                from smesh.lab import kubelab  # noqa: PLC0415 - only for Kubernetes labs

                kubelab.start_control_plane(lab, topo, cgroup_root)
            if mesh and install == "processes":
                _start_mesh(lab, topo, cgroup_root, policy)
            if kubernetes:
                kubelab.start_kubelets(lab, topo, cgroup_root)
            if install == "chart":
                chart.install(topo, cgroup_root, values=chart_values)
            lab.phase = "up"
            state.save(lab)
        except BaseException:
            _teardown(name, cgroup_root)
            raise
    return topo


def _start_mesh(
    lab: state.LabState, topo: Topology, cgroup_root: Path, policy: Path | None
) -> None:
    """The control plane, then one agent per node; returns once every agent is ready."""
    from smesh.lab import agents, control  # noqa: PLC0415 - TLS and HTTP only when meshed

    control.set_up_identity(topo)
    lab.signer = control.start_signer(topo, cgroup_root)
    state.save(lab)
    # Always a policy file, so `smesh lab policy` can replace it and SIGHUP every agent
    # (an agent started without one has nothing to reload). A link to --policy: an edit
    # of that file and a SIGHUP reload it too, as with an agent of one's own.
    installed = state.policy_path(topo.name)
    if policy is not None:
        installed.symlink_to(policy.resolve())
    else:
        installed.write_text("# no rules: every connection within the mesh is allowed\n")
    extra: dict[str, Any] = {"policy": str(installed)}
    overrides = list(lab.settings.get("agent_overrides", []))
    for node in topo.nodes:
        lab.agents[node.name] = agents.start(topo, node, cgroup_root, extra, overrides)
        state.save(lab)
    for node in topo.nodes:
        agents.wait_ready(topo, node, lab.agents[node.name])


def publish_workloads(topo: Topology, cgroup_root: Path) -> None:
    """Describe every pod to the agents, the way a Kubernetes API would."""
    from smesh.agent import workloads  # noqa: PLC0415 - pydantic only where it is needed

    directory = state.workloads_dir(topo.name)
    for pod in topo.pods:
        workloads.write(
            directory,
            workloads.Workload(
                name=pod.name,
                namespace=pod.namespace,
                service_account=pod.service_account,
                node=pod.node,
                ips=(pod.ip4, pod.ip6),
                netns=pod.netns,
                cgroup=cgroup_root / pod.cgroup,
                meshed=topo.mesh,
            ),
        )


def _teardown(name: str, cgroup_root: Path) -> None:
    lab = _saved(name)
    if lab is not None and (lab.kubelets or lab.control_plane):
        # Kubelets first (no new pods), then the control plane newest first, one by one: an
        # API server whose etcd goes away while it shuts down hangs until killed. The pods and
        # whatever does not end in time go with the lab's cgroup below.
        _stop_all([*lab.kubelets.values(), *lab.proxies.values()])
        for component in reversed(list(lab.control_plane)):
            _stop_all([lab.control_plane[component]])
    if lab is not None and (lab.agents or lab.signer):  # gently first: agents drain
        from smesh.lab import agents  # noqa: PLC0415

        for process in lab.agents.values():
            agents.stop(process)
        for process in (p for ps in lab.lingering.values() for p in ps):
            agents.stop(process, sig=signal.SIGINT)  # handed over: SIGTERM would not end it
        if lab.signer is not None:
            agents.stop(lab.signer)
    builder.teardown(name, cgroup_root, state.bpf_pin_dir(name))
    directory = state.directory(name)
    if directory.exists():
        for entry in sorted(directory.rglob("*"), key=lambda p: -len(p.parts)):
            entry.rmdir() if entry.is_dir() else entry.unlink()
        directory.rmdir()


def _stop_all(processes: Sequence[state.Process], timeout: float = 5.0) -> None:
    """SIGTERM every one of *processes* (by pid, checked by start time), wait a little."""
    for process in processes:
        if process.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(p.alive() for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)


def down(name: str = topology.DEFAULT_NAME) -> bool:
    """Remove lab *name* entirely. Returns whether there was anything to remove."""
    topology.validate_name(name)
    cgroup_root = _preflight("smesh lab down")
    with _locked(name):
        existed = bool(_leftovers(name, cgroup_root))
        _teardown(name, cgroup_root)
    with contextlib.suppress(FileNotFoundError):
        (state.STATE_ROOT / f".{name}.lock").unlink()
    return existed


def _saved(name: str) -> state.LabState | None:
    try:
        return state.load(name)
    except LabError:
        return None  # damaged state: teardown works from names alone


def load(name: str) -> tuple[state.LabState, Topology]:
    topology.validate_name(name)
    lab = state.load(name)
    if lab is None:
        from smesh.lab import inventory  # noqa: PLC0415

        raise LabNotFound(inventory.not_found(name))
    if lab.phase != "up":
        raise LabError(
            f"lab {name!r} is not fully built (a crashed `up`?); "
            f"run `smesh lab down --lab {name}` and try again"
        )
    return lab, lab.topology()


def status(name: str = topology.DEFAULT_NAME) -> dict[str, Any]:
    """The lab as the stable JSON document of ``smesh lab status --json``."""
    from smesh.lab import agents  # noqa: PLC0415

    lab, topo = load(name)
    root = cgroups.v2_root()
    nodes = []
    chart = lab.settings.get("install") == "chart"
    for node in topo.nodes:
        # A chart lab's agents are the DaemonSet's pods (agent_pod, below), never processes.
        agent = None if chart else lab.agents.get(node.name)
        health = agents.pod_health(node) if chart else agents.health(node, agent)
        nodes.append(
            {
                "name": node.name,
                "netns": node.netns,
                "ip": str(node.ip4),
                "ip6": str(node.ip6),
                "pod_cidr": str(node.pod_cidr4),
                "pod_cidr6": str(node.pod_cidr6),
                "present": netns.exists(node.netns),
                "agent_pid": agent.pid if agent else None,
                "agent_pod": None,
                "agent_health": health,
                # agents that handed the node over and serve their last connections
                "agents_lingering": [p.pid for p in lab.lingering.get(node.name, []) if p.alive()],
            }
        )
    pods = [
        {
            "name": pod.name,
            "node": pod.node,
            "ip": str(pod.ip4),
            "ip6": str(pod.ip6),
            "netns": pod.netns,
            "cgroup": str(root / pod.cgroup),
            "meshed": topo.mesh,
            "namespace": pod.namespace,
            "service_account": pod.service_account,
            "present": netns.exists(pod.netns),
        }
        for pod in topo.pods
    ]
    doc: dict[str, Any] = {"name": topo.name, "mesh": topo.mesh, "nodes": nodes, "pods": pods}
    doc["kubernetes"] = topo.kubernetes
    doc["install"] = ("chart" if chart else "processes") if topo.mesh else None
    if topo.kubernetes:
        from smesh.lab import kubelab, kubepaths  # noqa: PLC0415

        doc["api_server"] = kubepaths.API_SERVER
        doc["kubeconfig"] = str(kubepaths.admin_kubeconfig(topo.name))
        doc["control_plane"] = {
            component: {"pid": process.pid, "alive": process.alive()}
            for component, process in lab.control_plane.items()
        }
        for entry in nodes:
            kubelet = lab.kubelets.get(str(entry["name"]))
            entry["kubelet_pid"] = kubelet.pid if kubelet else None
            entry["kubelet_alive"] = bool(kubelet and kubelet.alive())
            proxy = lab.proxies.get(str(entry["name"]))
            entry["kube_proxy_pid"] = proxy.pid if proxy else None
            entry["kube_proxy_alive"] = bool(proxy and proxy.alive())
        doc["kubernetes_pods"] = kubelab.pod_rows(topo)
        if chart:
            for entry in nodes:
                entry["agent_pod"] = _agent_pod(doc["kubernetes_pods"], str(entry["name"]))
    return doc


def _agent_pod(rows: Sequence[dict[str, Any]], node: str) -> str | None:
    """NAMESPACE/NAME of the chart's agent pod on *node* (two, comma-separated, mid-rollout)."""
    from smesh.lab.install import AGENT_POD_PREFIX, NAMESPACE  # noqa: PLC0415

    found = [
        f"{NAMESPACE}/{row['name']}"
        for row in rows
        if row["namespace"] == NAMESPACE
        and str(row["name"]).startswith(AGENT_POD_PREFIX)
        and row["node"] == node
        and not row["deleting"]
    ]
    return ", ".join(found) or None


def _process_agents_only(lab: state.LabState, verb: str) -> None:
    """Refuse *verb* on a chart lab: its agents are pods, which the lab does not start."""
    if lab.settings.get("install") == "chart":
        raise LabError(
            f"lab {lab.name!r} runs its agents as pods of the chart's DaemonSet, not as lab "
            f"processes, so {verb} cannot act on them: restart one with `smesh lab kubectl "
            f"--lab {lab.name} -- -n smesh-system delete pod POD` (`smesh lab status` names "
            "each node's agent pod), or bring the lab up with `--install processes`"
        )


def restart_agent(name: str, node_name: str, verb: str = "restart-agent") -> state.Process:
    """Start a new agent for *node_name*. If one runs, the new one takes the node over
    from it (its listening sockets, then capture: docs/agent.md, "Hand-over"), and the old
    one serves its open connections until they end, then exits; it is remembered (by pid)
    until then, so ``lab down`` stops it too. After a crash or a stop, the new agent takes
    the pinned capture over. Returns once the new agent serves the node and is ready.
    """
    from smesh.lab import agents  # noqa: PLC0415

    cgroup_root = _preflight(f"smesh lab {verb}")
    with _locked(name):
        lab, topo = load(name)
        if not topo.mesh:
            raise LabError(f"lab {name!r} runs without the mesh (--no-mesh): it has no agents")
        _process_agents_only(lab, verb)
        node = topo.node(node_name)
        old = lab.agents.get(node.name)
        lingering = [p for p in lab.lingering.get(node.name, []) if p.alive()]
        if old is not None and old.alive():
            lingering.append(old)
        lab.lingering[node.name] = lingering
        overrides = list(lab.settings.get("agent_overrides", []))
        config_path = agents.node_dir(name, node.name) / "agent.yaml"
        process = agents.restart(topo, node, cgroup_root, config_path, overrides)
        lab.agents[node.name] = process
        state.save(lab)
    if old is None or not old.alive():
        agents.wait_ready(topo, node, process)
        return process
    try:
        agents.wait_handed_over(topo, node, process)
    except LabError:
        if old.alive() and not process.alive():  # the hand-over failed: the old one serves on
            with _locked(name):
                lab, _topo = load(name)
                lab.agents[node.name] = old
                lab.lingering[node.name] = [p for p in lab.lingering[node.name] if p != old]
                state.save(lab)
        raise
    return process


def stop_agent(name: str, node_name: str) -> bool:
    """Stop *node_name*'s agent (SIGTERM: it drains; its pods' capture stays pinned, so their
    connects fail closed, and new pods' CNI ADDs fail) until ``restart-agent``.

    Returns whether it was running.
    """
    from smesh.lab import agents  # noqa: PLC0415

    _preflight("smesh lab stop-agent")
    with _locked(name):
        lab, topo = load(name)
        if not topo.mesh:
            raise LabError(f"lab {name!r} runs without the mesh (--no-mesh): it has no agents")
        _process_agents_only(lab, "stop-agent")
        node = topo.node(node_name)
        process = lab.agents.get(node.name)
        if process is None or not process.alive():
            return False
        agents.stop(process)
        if process.alive():
            raise LabError(f"the agent of {node.name} (pid {process.pid}) did not stop in 10 s")
    return True


def restart_control_plane(
    name: str, component: str, *, loopback_only: bool = False
) -> state.Process:
    """Stop one control-plane component (by pid) and start it again; the others keep running.

    *loopback_only* (kube-apiserver): it listens on 127.0.0.1 in ``NAME.control`` only, so the
    nodes (kubelets, agents) cannot reach it while an admin can
    (``lab kubectl -- --server https://127.0.0.1:6443 ...``): an API outage for the nodes.
    """
    from smesh.lab import cluster  # noqa: PLC0415

    if loopback_only and component != "kube-apiserver":
        raise LabError(f"--loopback-only is for kube-apiserver only, not {component}")
    cgroup_root = _preflight("smesh lab restart-control-plane")
    with _locked(name):
        lab, topo = load(name)
        if not topo.kubernetes:
            raise LabError(f"lab {name!r} is not a Kubernetes lab: it has no control plane")
        cluster.stop_component(lab, component)
        extra = ["--bind-address=127.0.0.1"] if loopback_only else []
        try:
            return cluster.start_component(lab, topo, cgroup_root, component, extra)
        finally:
            state.save(lab)  # the new pid, even if it did not become healthy


def restart_kubelet(name: str, node_name: str) -> state.Process:
    """Stop *node_name*'s kubelet (its pods keep running) and start it again; it adopts them."""
    from smesh.lab import kubelab  # noqa: PLC0415

    cgroup_root = _preflight("smesh lab restart-kubelet")
    with _locked(name):
        lab, topo = load(name)
        if not topo.kubernetes:
            raise LabError(f"lab {name!r} is not a Kubernetes lab: it has no kubelets")
        node = topo.node(node_name)
        old = lab.kubelets.get(node.name)
        if old is not None:
            _stop_all([old])
        process = kubelab.spawn_kubelet(topo, node, cgroup_root)
        lab.kubelets[node.name] = process
        state.save(lab)
    return process


def exec_argv(name: str, member: str, argv: Sequence[str]) -> None:
    """Replace this process with *argv* running in *member*'s cgroup and network namespace
    (and a Kubernetes pod's container's mount namespace: its volumes and resolv.conf).

    The cgroup is joined first: entering the namespace first would make the cgroup file
    a path in the wrong place for nothing, and ``ip netns exec`` is avoided because it
    remounts /sys. A node runs commands in its ``host`` cgroup, outside every pod.
    """
    if not argv:
        raise LabError("nothing to run: give a command after `--`")
    root = _preflight("smesh lab exec")
    _lab, topo = load(name)
    if "/" in member:  # NAMESPACE/POD: a Kubernetes pod
        if not topo.kubernetes:
            raise LabError(f"lab {name!r} is not a Kubernetes lab: it has no pod {member!r}")
        from smesh.lab import kubelab  # noqa: PLC0415

        found = kubelab.find_pod(topo, member)
        cgroups.join(Path(found.sandbox.cgroup))
        netns.enter(found.sandbox.netns or topo.node(found.node).netns)
        argv = [*kubelab.mounts_prefix(found.sandbox), *argv]  # as `kubectl exec`
    else:
        target = topo.member(member)
        cgroup = target.cgroup if isinstance(target, Pod) else target.host_cgroup
        cgroups.join(root / cgroup)
        netns.enter(target.netns)
    try:
        os.execvp(argv[0], list(argv))
    except FileNotFoundError:
        raise CommandNotFound(f"command not found: {argv[0]}") from None


def kubectl_argv(name: str, argv: Sequence[str]) -> None:
    """Replace this process with kubectl, run inside ``NAME.control`` with the admin kubeconfig.

    Only there: the machine's own network namespace never talks to the lab's API server.
    """
    from smesh.lab import kubepaths  # noqa: PLC0415
    from smesh.lab.controlplane import DEFAULT_BIN_DIR  # noqa: PLC0415

    root = _preflight("smesh lab kubectl")
    _lab, topo = load(name)
    if not topo.kubernetes:
        raise LabError(
            f"lab {name!r} has no Kubernetes control plane; start one with "
            f"`smesh lab up --kubernetes --lab {name}`"
        )
    kubectl = DEFAULT_BIN_DIR / "kubectl"
    if not kubectl.is_file():
        raise CommandNotFound(f"{kubectl} is not built: run `make kubernetes`")
    cgroups.join(root / topo.cgroup / "control")
    netns.enter(topo.control_netns)
    config = str(kubepaths.admin_kubeconfig(name))
    os.execve(str(kubectl), ["kubectl", *argv], {**os.environ, "KUBECONFIG": config})
