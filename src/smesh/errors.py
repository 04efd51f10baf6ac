"""The root of smesh's error types.

Every error a user can meet derives from :class:`SmeshError`; its message says what went
wrong and what to do about it, so the CLI can print it as one line and exit non-zero.
Each package defines its own subclasses next to the code that raises them.
"""


class SmeshError(Exception):
    """An error whose message is meant for the person running smesh."""

    exit_code = 1
