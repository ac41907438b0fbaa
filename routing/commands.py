"""The command lines that ``apply`` and ``verify`` print as fixes.

Built in one place so every hint is a command that really exists, spelled the
way ``cli`` parses it.
"""
from __future__ import annotations

import shlex

from .broker import redact


def routing_command(*args: str, url: str | None = None) -> str:
    """``python -m routing <args>``, plus ``--url`` when the operator gave one.

    The URL is only repeated when it was given explicitly: a fix run without
    it would act on CELERY_BROKER_URL, maybe another broker than the one just
    checked. Its password is masked so the hint can be pasted into tickets.
    """
    parts = ["python", "-m", "routing", *args]
    if url:
        parts += ["--url", redact(url)]
    return shlex.join(parts)
