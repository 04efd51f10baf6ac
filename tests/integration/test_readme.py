"""README.md's command blocks run as shown, so the README cannot rot.

Every ```sh block runs, in order, in bash (`-e -o pipefail`), with the checkout's `smesh` on
PATH and ``SMESH_LAB`` set to a lab name of this run: the blocks' text is what a user types
(`smesh lab up`), and their lab is this test's own. A block that is not meant to run as it
stands says so in the README itself, with its reason, in the comment line right above it:
``<!-- readme-test: skip: REASON -->``; there is no list of exceptions here.
"""

from __future__ import annotations

import collections.abc
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.labkit import smesh, unique_name

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = re.compile(r"^<!-- readme-test: (?P<directive>\w+)(?:: (?P<reason>.*?))? -->$")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    text: str
    skip: str | None  # the README's reason, if it is not to run


def blocks(text: str) -> list[Block]:
    """The ```sh blocks of *text*, each with the skip marker right above it, if any."""
    found = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip() != "```sh":
            index += 1
            continue
        start = index
        end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "```")
        above = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        marker = MARKER.match(above.strip())
        skip = (marker["reason"] or "(no reason given)") if marker else None
        found.append(Block(start + 1, "\n".join(lines[start + 1 : end]) + "\n", skip))
        index = end + 1
    return found


def test_every_marker_skips_the_block_below_it_and_says_why() -> None:
    """A marker that is misspelt, lacks its reason or stands above no block is an error, so
    a block never runs (or is skipped) by accident."""
    lines = README.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if "readme-test" not in line:
            continue
        marker = MARKER.match(line.strip())
        assert marker, f"README.md:{number}: not `<!-- readme-test: skip: REASON -->`"
        assert marker["directive"] == "skip", f"README.md:{number}: only `skip` is known"
        assert (marker["reason"] or "").strip(), f"README.md:{number}: give the reason"
        below = next((s for s in lines[number:] if s.strip()), "")
        assert below.strip() == "```sh", f"README.md:{number}: no ```sh block below"


@pytest.fixture
def lab_name() -> collections.abc.Iterator[str]:
    """The lab the README's commands act on; removed afterwards whatever they did."""
    name = unique_name("readme")
    yield name
    smesh("lab", "down", "--lab", name, check=False)


@pytest.mark.timeout(1500)  # the blocks: about 2 minutes, a Kubernetes lab among them
def test_readme_blocks_run_as_shown(lab_name: str, tmp_path: Path) -> None:
    runnable = [b for b in blocks(README.read_text()) if b.skip is None]
    assert len(runnable) >= 3, "the README's lab and mesh blocks run"
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "smesh").exists(), f"no smesh next to {sys.executable} (make setup)"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "SMESH_LAB": lab_name,
    }
    for block in runnable:
        script = tmp_path / f"block-{block.line}.sh"
        script.write_text(block.text)
        log = tmp_path / f"block-{block.line}.log"
        with log.open("w") as out:
            # Output into a file, not a pipe: a block may leave a server running in the
            # background (it ends with the lab), which would hold a pipe open.
            proc = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-x", str(script)],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=600,
                check=False,
            )
        output = log.read_text()
        assert proc.returncode == 0, (
            f"README.md:{block.line}: the block exited {proc.returncode}; its commands "
            f"(+) and output, last 60 lines:\n" + "\n".join(output.splitlines()[-60:])
        )
