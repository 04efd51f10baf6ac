"""What can go wrong in a benchmark run, said so the user knows what to fix."""

from smesh.errors import SmeshError


class BenchError(SmeshError):
    """A measurement could not be taken (a tool failed, a peer did not start, …)."""
