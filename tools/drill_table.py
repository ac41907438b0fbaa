#!/usr/bin/env python3
"""Print the last drill figures (``var/drills/figures.json``, written by the drills in
``make test``) as the Markdown table docs/reliability.md shows."""
from __future__ import annotations

import json
import sys
from pathlib import Path

FIGURES = Path(__file__).resolve().parents[1] / "var" / "drills" / "figures.json"
COLUMNS = ("submitted", "accepted", "executed", "lost", "duplicated", "dead_lettered",
           "recovered", "left_in_queues")


def table(figures: dict) -> str:
    head = ["drill", *(c.replace("_", " ") for c in COLUMNS), "seconds", "what happened"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, f in figures.items():
        cells = [name, *(str(f[c]) for c in COLUMNS), f"{f['seconds']:.1f}", f["notes"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    try:
        figures = json.loads(FIGURES.read_text())
    except (OSError, ValueError) as exc:
        print(f"drill_table: no figures to show ({exc}); run the drills first (make test)",
              file=sys.stderr)
        return 1
    print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
