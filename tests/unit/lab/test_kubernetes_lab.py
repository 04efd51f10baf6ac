"""A --kubernetes lab's plan pieces: the control plane's fabric leg and the agents' config."""

from __future__ import annotations

from smesh.lab import agents, builder, install, kubepaths, state, topology
from smesh.lab.kubelet_exec import expand


def test_the_control_namespace_gets_one_fabric_leg_created_inside_it() -> None:
    topo = topology.plan("k", nodes=2, kubernetes=True)
    fabric = builder.fabric_commands(topo)
    assert "link add ctl type veth peer name eth0 netns k.control" in fabric
    assert "link set ctl master fab0" in fabric
    control = builder.control_commands()
    assert "addr add 198.19.0.250/24 dev eth0" in control
    assert "addr add fd00:198:19::fa/64 dev eth0 nodad" in control
    assert not any("route" in cmd for cmd in control)  # the control plane talks to the fabric only
    assert not any("ctl" in cmd for cmd in builder.fabric_commands(topology.plan("k")))


def test_agents_of_a_plain_lab_read_the_workloads_directory() -> None:
    topo = topology.plan("k", nodes=2)
    config = agents.config_for(topo, topo.nodes[0])
    assert "workloads" in config
    assert "kubernetes" not in config


def test_agents_of_a_kubernetes_lab_watch_the_api() -> None:
    topo = topology.plan("k", nodes=2, kubernetes=True)
    node = topo.nodes[1]
    config = agents.config_for(topo, node)
    assert "workloads" not in config
    assert config["kubernetes"] == {
        "kubeconfig": str(kubepaths.agent_kubeconfig("k", "node-2")),
        "cniSocket": str(kubepaths.cni_socket("k", "node-2")),
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": "/smesh-lab-k/node-2",
        "sandboxDir": str(kubepaths.node_dir("k", "node-2") / "sandboxes"),
    }
    assert str(kubepaths.agent_kubeconfig("k", "node-2")).endswith(
        "k/nodes/node-2/agent.kubeconfig"
    )
    # a lab without --kubernetes, or without the mesh, is not affected
    plain = topology.plan("k", nodes=2)
    assert "workloads" in agents.config_for(plain, plain.nodes[0])
    assert not agents.meshed_through_api(topology.plan("k", mesh=False, kubernetes=True))


def test_the_chart_values_of_a_lab_give_each_node_its_cgroup_root_and_pin_dir() -> None:
    topo = topology.plan("li", 2, 0, True, {}, kubernetes=True)
    extra = install.lab_values(topo)["agent"]["extraArgs"]
    settings = dict(item.split("=", 1) for item in extra[1::2])
    assert extra[0::2] == ["--set"] * len(settings)
    assert settings["kubernetes.cgroupRoot"] == "/smesh-lab-li/$(NODE_NAME)"
    assert settings["kubernetes.cgroupDriver"] == "cgroupfs"
    assert settings["capture.pinDir"] == f"{state.bpf_pin_dir('li')}/$(NODE_NAME)"
    # what the kubelet makes of it on node-1 is that node's cgroup (the lab kubelet's root)
    assert expand(settings["kubernetes.cgroupRoot"], {"NODE_NAME": "node-1"}) == (
        f"/{topo.node('node-1').cgroup}"
    )
