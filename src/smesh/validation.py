"""Turning pydantic's validation errors into the one line smesh shows a user.

Every file smesh reads (agent config, workload descriptions) reports its first problem
as ``FILE: field.path[0]: what is wrong``. An unknown key comes first: a typo'd key
(``acton:``) also makes the key it was meant to be missing, and "rules[0].acton: unknown
field (did you mean 'action'?)" is the error that says what to fix, where
"rules[0].action: required but missing" sends the reader looking for a line they believe
is there.
"""

from __future__ import annotations

import difflib
import ipaddress
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def location(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


@dataclass(frozen=True)
class Problem:
    """The one validation problem shown to a user; an unknown key carries what was meant."""

    location: str  # ``rules[0].acton``: an unknown key's location ends with the key
    message: str
    unknown_key: str | None = None
    suggestion: str | None = None  # the closest known key, if any is close

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class UnknownKey(Exception):
    """A file has a key its schema does not know; mixed into ConfigError, PolicyError, ...

    The attributes say which key, where, and the closest known one (``None`` if nothing is
    close), for a caller that wants more than the message.
    """

    def __init__(self, message: str, problem: Problem) -> None:
        super().__init__(message)
        self.key = problem.unknown_key
        self.location = problem.location
        self.suggestion = problem.suggestion


def problem(exc: ValidationError, model: type[BaseModel] | None = None) -> Problem:
    """The first unknown key if there is one, else the first error, in a user's words.

    With *model* (the type that was validated), an unknown key gets the closest known key
    at its place as a suggestion (difflib), and the known keys when none is close.
    """
    errors = exc.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first["loc"])
    if first["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
        key = loc[-1]
        known = _keys_at(model, loc[:-1]) if model is not None else []
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        message = "unknown field"
        if close:
            message += f" (did you mean {close[0]!r}?)"
        elif known:
            message += f" (known here: {', '.join(known)})"
        return Problem(location(loc), message, key, close[0] if close else None)
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "required but missing"
    return Problem(location(loc), message)


def describe(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """``field.path: message`` for the first error (an unknown key first): :func:`problem`."""
    return str(problem(exc, model))


def _keys_at(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The keys a file may write at *loc* of *model* (aliases, as files spell them)."""
    types_here: list[Any] = [model]
    for part in loc:
        types_here = [t for here in types_here for t in _step(here, part)]
    keys: list[str] = []
    for here in types_here:
        for candidate in _members(here):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                for name, info in candidate.model_fields.items():
                    key = info.alias or name
                    if key not in keys:
                        keys.append(key)
    return keys


def _members(annotation: Any) -> list[Any]:
    """*annotation* without Annotated[...] and unions: the types a value may have."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    return [annotation]


def _step(annotation: Any, part: int | str) -> list[Any]:
    """The types at *part* (a field, an index, a key, or pydantic's union member tag)."""
    found: list[Any] = []
    for member in _members(annotation):
        origin = typing.get_origin(member)
        args = typing.get_args(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            if isinstance(part, str) and part == member.__name__:  # a union's tag in loc
                found.append(member)
                continue
            for name, info in member.model_fields.items():
                if part in (name, info.alias):
                    found.append(info.annotation)
        elif origin in (list, tuple, set, frozenset, Sequence) and isinstance(part, int):
            found += [a for a in args if a is not Ellipsis][:1]
        elif origin is dict and args:
            found.append(args[-1])
    return found


def _ip(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
    return value


IP = Annotated[IPAddress, BeforeValidator(_ip)]
