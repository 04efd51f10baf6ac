"""The commands that build a lab never configure the host's own network namespace."""

from __future__ import annotations

from smesh.lab import builder, topology


def test_every_veth_is_created_with_its_peer_inside_a_lab_namespace() -> None:
    topo = topology.plan("x", nodes=2, pods_per_node=2)
    lines = builder.fabric_commands(topo) + [
        line for node in topo.nodes for line in builder.node_commands(topo, node)
    ]
    veths = [line for line in lines if "type veth" in line]
    assert len(veths) == len(topo.nodes) + len(topo.pods)
    for line in veths:
        peer_netns = line.split("netns ")[1]
        assert peer_netns in topo.netns_names


def test_nodes_route_every_other_nodes_pod_cidrs_and_nothing_else() -> None:
    topo = topology.plan("x", nodes=3)
    node = topo.node("node-2")
    routes = [line for line in builder.node_commands(topo, node) if line.startswith("route")]
    assert sorted(routes) == sorted(
        [
            "route add 198.18.1.0/24 via 198.19.0.1",
            "route add 198.18.3.0/24 via 198.19.0.3",
            "route add fd00:198:18:1::/64 via fd00:198:19::1",
            "route add fd00:198:18:3::/64 via fd00:198:19::3",
        ]
    )


def test_pods_default_route_points_at_their_nodes_bridge() -> None:
    topo = topology.plan("x")
    cmds = builder.pod_commands(topo, topo.pod("pod-3"))
    assert "route add default via 198.18.2.1" in cmds
    assert "route add default via fd00:198:18:2::1" in cmds
    assert "addr add 198.18.2.2/24 dev eth0" in cmds
