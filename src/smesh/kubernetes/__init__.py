"""smesh on Kubernetes: API client, informer, kubelet cgroup layout, CNI hand-off and plugin.

The agent will see this package only through its workload-source interface. The state logic
(the informer's store, its diff on relist, the watch protocol and the backoff) is sans-IO in
:mod:`.store`, :mod:`.protocol` and :mod:`.backoff`; :mod:`.client` and :mod:`.informer` do
the HTTP.
"""
