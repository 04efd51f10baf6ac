"""Concurrency-model candidates for the data plane, as proxy pairs the benchmark races.

Each candidate does the job of a stunnel pair (node-1: plain in, mutual TLS 1.3 out;
node-2: TLS in, plain out) with one way of structuring I/O, so the benchmark measures
the structure and nothing else:

* ``streams``: asyncio streams, ``ssl=`` on ``start_server``/``open_connection``;
* ``protocols``: asyncio Protocols/Transports with the loop's TLS, pause/resume flow;
* ``threads``: blocking sockets, ``ssl.SSLSocket``, a thread per direction;
* ``memorybio``: smesh's own relay (:mod:`smesh.dataplane.relay`) and TLS session.

The asyncio ones run on the default loop or uvloop; any can run as several processes on
one port (SO_REUSEPORT). Entry point: ``python -m smesh.bench.models`` (see ``launch``).
"""
