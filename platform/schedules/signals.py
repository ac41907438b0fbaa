"""``schedule_event``: sent when a schedule's fire time gave a job or none, for
observers (``monitoring`` counts them). Sent by the dispatcher's schedule pass and
the web's trigger, after their transaction commits.

Keyword arguments: ``event`` (``fired``, ``skipped`` or ``started``), ``task`` (a
registered task), ``reason`` for a skip (``schedules.firing.Reason``: missed, overlap,
quota, invalid); for ``started`` (a fired job's first start, seen in the job table by
the dispatcher), ``lane``, ``tier`` and ``lateness`` (seconds from the fire time).
"""
from __future__ import annotations

from django.dispatch import Signal

schedule_event = Signal()


def schedule_event_send(event: str, *, task: str, reason: str = "", lane: str = "",
                        tier: str = "", lateness: float | None = None) -> None:
    """Tell observers a schedule fired (``fired``), skipped a fire time (``skipped``),
    or that a fired job started ``lateness`` seconds after its fire time (``started``)."""
    if schedule_event.receivers:
        schedule_event.send(sender=None, event=event, task=task, reason=reason, lane=lane,
                            tier=tier, lateness=lateness)
