"""`smesh completion bash|zsh`: generated from the parser, so it names every command."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smesh.cli import COMMANDS
from smesh.cli.completion import script


@pytest.fixture(scope="module")
def bash_script() -> str:
    return script("bash")


def option_strings(text: str, command: str) -> list[str]:
    match = re.search(rf"^_shtab_smesh_{command}_option_strings=\((.*)\)$", text, re.M)
    assert match, command
    return match.group(1).split()


def test_bash_names_every_command_and_their_flags(bash_script: str) -> None:
    top = re.search(r"^_shtab_smesh_subparsers=\((.*)\)$", bash_script, re.M)
    assert top
    assert set(top.group(1).split()) == set(COMMANDS)
    assert "--pods-per-node" in option_strings(bash_script, "lab_up")
    assert {"--lab", "--node", "--output", "-o", "-v"} <= set(option_strings(bash_script, "status"))


def test_hidden_aliases_are_not_offered(bash_script: str) -> None:
    """Completion teaches the convention: -o json and --lab, not --json and --name."""
    for line in bash_script.splitlines():
        if "_option_strings=(" in line:
            words = line.split("(", 1)[1].rstrip(")").split()
            assert "--json" not in words, line
            assert "--name" not in words, line


def complete(bash_script: str, tmp_path: Path, *words: str) -> list[str]:
    """What bash offers after *words* (the last one being completed), with the script
    sourced: the function `complete -F` registered, called as readline would."""
    path = tmp_path / "smesh.bash"
    path.write_text(bash_script)
    line = " ".join(words)
    probe = (
        f"source {path}\n"
        f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMP_LINE='{line}'; "
        f"COMP_POINT={len(line)}\n"
        '_shtab_smesh smesh "${COMP_WORDS[-1]}" "${COMP_WORDS[-2]}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return sorted(proc.stdout.split())


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_verbs_and_flags(bash_script: str, tmp_path: Path) -> None:
    assert complete(bash_script, tmp_path, "smesh", "st") == ["status"]
    assert complete(bash_script, tmp_path, "smesh", "lab", "st") == ["status", "stop-agent"]
    assert complete(bash_script, tmp_path, "smesh", "status", "--no") == ["--node"]
    assert complete(bash_script, tmp_path, "smesh", "status", "-o", "") == ["json", "text"]


def test_completion_is_a_command_that_prints_the_script() -> None:
    for shell, first in (("bash", "# AUTOMATICALLY GENERATED"), ("zsh", "#compdef smesh")):
        proc = subprocess.run(
            [sys.executable, "-m", "smesh", "completion", shell],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert proc.stdout.startswith(first), shell
        assert "lab" in proc.stdout


def test_zsh_script_parses(tmp_path: Path) -> None:
    path = tmp_path / "_smesh"
    path.write_text(script("zsh"))
    subprocess.run(["zsh", "-n", str(path)], check=True, timeout=60)
