"""``manage.py queues``: a terminal view of the lanes, in the spirit of ``top``.

Per lane and tier: jobs waiting and the oldest one's age, runs per second over
the last minute and the window, wait percentiles, jobs running; per lane, the
broker's ready and unacked messages, consumers and dead letters. Refreshes
every ``--interval`` seconds until Ctrl-C; ``--once`` prints one screen and
exits 0, ``--json`` prints the snapshot as JSON (for scripts).
"""
from __future__ import annotations

import json
import sys
import time

from django.core.management.base import BaseCommand

from monitoring.snapshot import Snapshot, queue_snapshot

CLEAR = "\x1b[H\x1b[2J"


def _num(value) -> str:
    return "-" if value is None else str(value)


def _secs(value) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def render(snap: Snapshot) -> str:
    """The snapshot as a fixed-width table."""
    head = (f"Switchyard queues  {snap.generated_at[:19].replace('T', ' ')} UTC  "
            f"window {snap.window_seconds}s  broker "
            + ("ok" if snap.broker_available else f"UNAVAILABLE ({snap.broker_error[:80]})"))
    cols = ("LANE", "TIER", "RATE/s 1m", f"RATE/s {snap.window_seconds}s", "FAILED", "WAITING",
            "OLDEST", "RUNNING", "WAIT p50", "p95", "p99", "READY", "UNACKED", "CONSUMERS",
            "DEAD")
    rows = []
    for lane in snap.lanes:
        for i, t in enumerate(lane.tiers):
            broker = (_num(lane.ready), _num(lane.unacked), _num(lane.consumers),
                      _num(lane.dead_letters)) if i == 0 else ("", "", "", "")
            rows.append((lane.lane if i == 0 else "", t.tier, f"{t.throughput_1m:.2f}",
                         f"{t.throughput_window:.2f}", str(t.failed_window), str(t.waiting),
                         _secs(t.oldest_waiting_seconds) if t.waiting else "-", str(t.running),
                         _secs(t.wait_p50), _secs(t.wait_p95), _secs(t.wait_p99), *broker))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = "  ".join
    out = [head, "", line(c.ljust(w) if i < 2 else c.rjust(w)
                          for i, (c, w) in enumerate(zip(cols, widths, strict=True)))]
    for r in rows:
        out.append(line(v.ljust(w) if i < 2 else v.rjust(w)
                        for i, (v, w) in enumerate(zip(r, widths, strict=True))))
    for lane in snap.lanes:
        if lane.tenants:
            out += ["", f"{lane.lane}: top tenants by runs started "
                        f"({snap.window_seconds}s)  TENANT TIER WEIGHT SHARE STARTED WAITING HELD"]
            for t in lane.tenants:
                out.append(f"  {t.tenant:<24} {t.tier:<9} {_num(t.weight):>6} "
                           f"{t.share * 100:5.1f}% {t.started:>7} {t.waiting:>7} {t.held:>7}")
    return "\n".join(out)


class Command(BaseCommand):
    help = "Show each lane and tier: backlog, rates, wait percentiles, consumers (like top)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="print once and exit")
        parser.add_argument("--json", action="store_true",
                            help="print the snapshot as JSON once and exit")
        parser.add_argument("--interval", type=float, default=2.0,
                            help="seconds between refreshes (default 2)")
        parser.add_argument("--window", type=int, default=300,
                            help="seconds covered by rates and percentiles (default 300)")

    def handle(self, *args, once=False, json=False, interval=2.0, window=300, **options):
        if json:
            self.stdout.write(_dumps(queue_snapshot(window=window).as_dict()))
            return
        if once:
            self.stdout.write(render(queue_snapshot(window=window)))
            return
        try:
            while True:
                screen = render(queue_snapshot(window=window))
                self.stdout.write(CLEAR + screen + "\n\n(Ctrl-C to quit)")
                sys.stdout.flush()
                time.sleep(max(0.5, interval))
        except KeyboardInterrupt:
            self.stdout.write("")


def _dumps(data: dict) -> str:
    return json.dumps(data, indent=2)
