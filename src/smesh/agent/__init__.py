"""The node agent: one per node, meshing every pod of its node.

For each meshed pod it attaches capture to the pod's cgroup, holds the pod's identity and
certificate, and runs the pod's outbound and inbound listeners inside the pod's network
namespace. The agent itself lives in its own cgroup in the node's namespace.
"""
