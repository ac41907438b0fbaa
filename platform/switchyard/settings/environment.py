"""Reading the environment, and the paths every settings module starts from (the one
place ``base`` and ``media`` take them from)."""
from __future__ import annotations

import os
from pathlib import Path


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


PROJECT_DIR = Path(__file__).resolve().parents[2]  # platform/
REPO_DIR = PROJECT_DIR.parent
VAR_DIR = Path(os.environ.get("SWITCHYARD_VAR_DIR", REPO_DIR / "var"))
(VAR_DIR / "static").mkdir(parents=True, exist_ok=True)  # SQLite, beat schedule, static
