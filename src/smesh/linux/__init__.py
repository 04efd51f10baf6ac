"""Thin wrappers over the Linux primitives smesh is built from.

Network namespaces, cgroup v2, capabilities and iproute2 are shared by the lab (which
builds pods out of them), capture (which attaches BPF to pod cgroups) and the agent (which
opens sockets inside pod namespaces). Nothing here knows about pods or meshes.
"""
