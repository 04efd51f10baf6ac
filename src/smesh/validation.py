"""Turning pydantic's validation errors into the one line smesh shows a user.

Every file smesh reads (agent config, workload descriptions) reports its first problem
as ``FILE: field.path[0]: what is wrong``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def location(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def describe(exc: ValidationError) -> str:
    """``field.path: message`` for the first error, in words a user can act on."""
    first = exc.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "required but missing"
    elif first["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{location(first['loc'])}: {message}"


def _ip(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
    return value


IP = Annotated[IPAddress, BeforeValidator(_ip)]
