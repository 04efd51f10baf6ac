"""Workload identity: SPIFFE IDs, the certificate authority, signing, and TLS set-up.

Every workload is ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``. Its
private key is generated where it is used (the node agent) and never leaves it; a signer
turns the agent's certificate signing request into a short-lived certificate, but only for
identities the requesting node is entitled to. All TLS configuration lives in
:mod:`smesh.identity.tls`.
"""
