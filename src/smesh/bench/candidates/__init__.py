"""Concurrency-model candidates for the data plane, raced by ``smesh bench --models``.

Each is a minimal proxy pair doing smesh's job with one way of structuring I/O (asyncio
streams, asyncio Protocols, a thread per direction, or smesh's own MemoryBIO relay), so
the benchmark can show why the data plane is built the way it is. ``memorybio`` runs the
real :class:`smesh.dataplane.relay.Relay`, not a copy.
"""
