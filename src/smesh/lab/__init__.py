"""`smesh lab`: a virtual cluster of namespace "pods" on one machine.

Nodes and pods are network namespaces joined by veth pairs and bridges and placed in cgroup
v2 directories, the way a CNI plugin and a kubelet build them on a real node. The plan is
pure (:mod:`smesh.lab.topology`); :mod:`smesh.lab.builder` turns it into kernel objects.
"""
