"""One ``with``-statement protocol for everything that holds a kernel handle.

File descriptors, BPF objects and namespace handles must be released on every path, so
each such class has a ``close()``; this mixin makes it usable in a ``with`` block.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
