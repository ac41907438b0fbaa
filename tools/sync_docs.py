#!/usr/bin/env python3
"""Write the generated topology tables into docs/architecture.md (``make docs``).

With ``--check``, change nothing and exit 1 if the file is out of date.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from routing import table  # noqa: E402

DOC = REPO / "docs" / "architecture.md"
START = "<!-- topology:start -->"
END = "<!-- topology:end -->"


def rendered(text: str) -> str:
    """``text`` with the section between the markers replaced by the current tables."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table.markdown().rstrip()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    current = DOC.read_text()
    wanted = rendered(current)
    if "--check" in argv:
        return 0 if current == wanted else 1
    DOC.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
