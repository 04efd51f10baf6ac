"""Installing smesh on a cluster: the CNI chain on each node, and `smesh install check`.

:mod:`.cni_chain` edits a node's CNI network configuration (pure functions over its JSON,
plus a small file edge); :mod:`.cniapp` packs ``smesh-cni`` for the host's Python;
:mod:`.check` judges an installation from API objects (pure) read by :mod:`.cluster`.
"""
