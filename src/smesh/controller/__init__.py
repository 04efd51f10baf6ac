"""The smesh controller: signs workload certificates requested through the Kubernetes CSR API.

:mod:`smesh.controller.decide` is the whole policy (sans-IO); :mod:`smesh.controller.run`
feeds it from informers, holds the leader Lease and writes the answers back.
"""
