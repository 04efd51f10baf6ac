"""L4 authorization: who may open a tunnel to which workload and port.

Rules are loaded from YAML (:mod:`smesh.policy.rules`) and evaluated by a pure function
(:func:`smesh.policy.decide.decide`) on every inbound tunnel request.
"""

from smesh.policy.decide import Decision, DestinationWorkload, Trace, decide, trace
from smesh.policy.rules import (
    Policy,
    PolicyError,
    PolicyStore,
    digest,
    document,
    from_document,
    load,
    parse,
)

__all__ = [
    "Decision",
    "DestinationWorkload",
    "Policy",
    "PolicyError",
    "PolicyStore",
    "Trace",
    "decide",
    "digest",
    "document",
    "from_document",
    "load",
    "parse",
    "trace",
]
