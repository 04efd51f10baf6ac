"""Sockets made through a Namespace handle live in that namespace; the caller stays home."""

from __future__ import annotations

import os
import socket

import pytest

from smesh.linux import netns
from smesh.linux.errors import LinuxError
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


def test_handles_follow_a_pod_into_a_new_namespace_and_close_what_they_drop(lab: Lab) -> None:
    first, second = lab.pod("pod-1")["netns"], lab.pod("pod-2")["netns"]
    with netns.NamespaceHandles() as handles:
        old = handles.of("default/pod-1", first)
        assert handles.of("default/pod-1", first) is old
        new = handles.of("default/pod-1", second)  # the pod, re-created in a new sandbox
        assert new.inode == netns.inode_of(second)
        with pytest.raises(LinuxError, match="cannot enter"):
            old.socket()  # closed: it no longer holds the old namespace open
        handles.release("default/pod-1")
        with pytest.raises(LinuxError, match="cannot enter"):
            new.socket()


def test_single_link_names_a_pods_veth_on_the_calling_thread(lab: Lab) -> None:
    """The link IPv6 link-local passthrough is scoped to: the pod's one interface besides lo,
    found without a thread (the agent asks on its event loop at every pod start)."""
    pod = lab.pod("pod-1")
    home = os.readlink("/proc/thread-self/ns/net")
    inside = netns.run_in(pod["netns"], socket.if_nameindex)
    (expected,) = [index for index, name in inside if name != "lo"]
    with netns.Namespace(pod["netns"]) as ns:
        assert netns.single_link(ns) == expected
        assert os.readlink("/proc/thread-self/ns/net") == home
    with netns.Namespace("/proc/self/ns/net") as ns:  # this process's own namespace
        host = [index for index, name in socket.if_nameindex() if name != "lo"]
        assert netns.single_link(ns) == (host[0] if len(host) == 1 else 0)
