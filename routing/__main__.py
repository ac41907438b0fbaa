"""Entry point of ``python -m routing``; the commands live in ``routing.cli``."""
from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
