#!/usr/bin/env python
"""Django's command-line utility for Switchyard."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    here = Path(__file__).resolve().parent
    # platform/ is a project folder, not a package; the repo root holds `routing`.
    for path in (str(here), str(here.parent)):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "switchyard.settings.base")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
