"""Switchyard's routing: the one source of the broker topology.

Pure Python and kombu, importable without Django. See ``topology`` (names,
queues, arguments), ``priorities`` (tiers and bands) and ``celery_config``
(what Celery is configured with). ``python -m routing --help`` lists the
operator commands.
"""
from __future__ import annotations

from .priorities import MAX_PRIORITY, PREMIUM, STANDARD, TIERS, Tier, tier
from .topology import (
    DEAD_LETTER_EXCHANGE,
    DLX_NAME,
    EXCHANGE_NAME,
    LANES,
    QUICK,
    SLOW,
    TASK_EXCHANGE,
    Lane,
    lane,
    routing_key,
)

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "DLX_NAME",
    "EXCHANGE_NAME",
    "LANES",
    "MAX_PRIORITY",
    "PREMIUM",
    "QUICK",
    "SLOW",
    "STANDARD",
    "TASK_EXCHANGE",
    "TIERS",
    "Lane",
    "Tier",
    "lane",
    "routing_key",
    "tier",
]
