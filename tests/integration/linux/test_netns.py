"""Sockets made through a Namespace handle live in that namespace; the caller stays home."""

from __future__ import annotations

import os

from smesh.linux import netns
from tests.integration.labkit import Lab


def test_namespace_socket_is_created_inside_and_the_thread_returns_home(lab: Lab) -> None:
    home = os.readlink("/proc/thread-self/ns/net")
    pod = lab.pod("pod-1")
    with netns.Namespace(pod["netns"]) as ns:
        listener = ns.socket()
        assert os.readlink("/proc/thread-self/ns/net") == home
        with listener:
            listener.bind((pod["ip"], 0))  # only possible inside pod-1: its address
            listener.listen()
            port = listener.getsockname()[1]
            client = netns.Namespace(lab.pod("pod-3")["netns"]).socket()
            with client:
                client.settimeout(5)
                client.connect((pod["ip"], port))  # across the lab's nodes, not from the host
                accepted, peer = listener.accept()
                accepted.close()
            assert peer[0] == lab.pod("pod-3")["ip"]
        assert ns.inode == netns.inode_of(pod["netns"])
