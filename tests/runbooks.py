"""Read the commands out of docs/runbooks/*.md, so tests can check and run them as written.

A runbook's commands are the lines of its ```sh blocks (``\\`` continuations
joined, comments dropped), each with the ``## `` section it appears in.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNBOOKS = REPO / "docs" / "runbooks"


@dataclass(frozen=True)
class Command:
    runbook: str
    section: str
    line: str


def commands(runbook: Path) -> list[Command]:
    found: list[Command] = []
    section = ""
    in_block = False
    pending = ""
    for raw in runbook.read_text().splitlines():
        if not in_block and raw.startswith("## "):
            section = raw[3:].strip()
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_block = stripped == "```sh" if not in_block else False
            continue
        if not in_block:
            continue
        line = stripped
        if pending:
            line = pending + " " + line
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        if line and not line.startswith("#"):
            found.append(Command(runbook.name, section, line))
    return found


def all_commands() -> list[Command]:
    return [c for path in sorted(RUNBOOKS.glob("*.md")) for c in commands(path)]


def find(runbook: str, pattern: str, section: str | None = None) -> str:
    """The one command of ``runbook`` matching the regex ``pattern`` (in ``section``)."""
    matches = [c.line for c in commands(RUNBOOKS / runbook)
               if re.search(pattern, c.line) and (section is None or c.section == section)]
    assert len(matches) >= 1, f"{runbook} has no command matching {pattern!r}"
    return matches[0]


def run(line: str, env: dict[str, str], timeout: float = 180,
        **placeholders: str) -> subprocess.CompletedProcess[str]:
    """Run a runbook line as an operator would, from the repository root, with
    ``python`` being this interpreter and ``JOB_ID``-style placeholders filled in."""
    for name, value in placeholders.items():
        line = line.replace(name, value)
    argv = shlex.split(line)
    if argv[0] == "python":
        argv[0] = sys.executable
    return subprocess.run(argv, cwd=REPO, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)
