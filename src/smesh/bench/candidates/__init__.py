"""Concurrency-model candidates for the data plane, raced by ``smesh bench --models``.

Each is a minimal proxy pair doing smesh's job with one way of structuring I/O (asyncio
streams, asyncio Protocols, or smesh's own MemoryBIO relay; each on the default loop or
uvloop, in one process or several sharing the port), so the benchmark can show why the
data plane is built the way it is. Threads with blocking ``SSLSocket`` are not among them:
a thread per direction shares one SSL object between two threads, which OpenSSL does not
support (our version of it stalled under iperf3), and one thread per connection with
blocking I/O cannot move both directions at once without risking deadlock. ``memorybio`` runs the
real :class:`smesh.dataplane.relay.Relay`, not a copy. ``native`` is the other kind of
candidate issue 23 asks for: the per-byte loop in C (native/hotpath.c), every decision
still in Python.
"""
