"""Reading a JSON-lines file that another process may be appending to at that moment.

Agents log JSON lines and the signer appends a line per certificate it issues; operators'
commands and the tests read those files while they grow. The last line may then be cut
where the writer's buffer ended (or, rarely, in the middle of a write), so only whole lines
are read: the rest is whole at the next read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def whole_lines(path: os.PathLike[str] | str) -> list[str]:
    """The whole lines of *path*, without their newlines. Raises FileNotFoundError."""
    data = Path(path).read_bytes()
    whole = data[: data.rfind(b"\n") + 1]  # cut before decoding: a cut may split a character
    return whole.decode(errors="replace").split("\n")[:-1]


def whole_records(path: os.PathLike[str] | str) -> list[dict[str, Any]]:
    """The JSON object of each whole line of *path* that is one (lines not starting with
    ``{``, such as a traceback on a log's stderr, are left out). Raises FileNotFoundError."""
    return [json.loads(line) for line in whole_lines(path) if line.startswith("{")]
