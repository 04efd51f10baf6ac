"""The data plane: each meshed pod's outbound and inbound listeners, and the relay.

All I/O of smesh's connections lives here, on one event loop. Setting a connection up
(accept, connect, TLS handshake, CONNECT) runs as a short asyncio task; once established,
a :class:`~smesh.dataplane.relay.Relay` copies bytes on reader/writer callbacks, with no
task, no per-connection buffer while idle, and many TLS records per system call.
"""
