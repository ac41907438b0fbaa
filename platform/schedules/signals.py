"""``schedule_event``: sent when a schedule's fire time gave a job or none, for
observers (``monitoring`` counts them). Sent by the dispatcher's schedule pass and
the web's trigger, after their transaction commits.

Keyword arguments: ``event`` (``fired`` or ``skipped``), ``task`` (a registered task),
``reason`` for a skip (``schedules.firing.Reason``: missed, overlap, quota, invalid).
"""
from __future__ import annotations

from django.dispatch import Signal

schedule_event = Signal()


def schedule_event_send(event: str, *, task: str, reason: str = "") -> None:
    """Tell observers a schedule fired (``fired``) or skipped a fire time (``skipped``)."""
    if schedule_event.receivers:
        schedule_event.send(sender=None, event=event, task=task, reason=reason)
