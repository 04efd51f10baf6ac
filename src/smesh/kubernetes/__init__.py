"""smesh on Kubernetes: the API client and informer, the pod source, the CNI plugin and hand-off.

The agent sees this package only through its workload-source interface
(:class:`.source.KubernetesSource`). The state logic (the informer's store, its diff on
relist, the watch protocol and the backoff, the Pod → workload mapping) is sans-IO in
:mod:`.store`, :mod:`.protocol`, :mod:`.backoff` and :func:`.source.workload_of`;
:mod:`.client`, :mod:`.informer` and :mod:`.sandboxes` do the I/O.
"""
