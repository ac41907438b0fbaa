"""``manage.py dispatch``: publish waiting jobs when due; find lost ones.

Runs as the ``dispatcher`` role. It publishes jobs whose countdown, eta or
retry backoff is due, batch chunks, and jobs the web could not publish; every
``--reap-every`` seconds it also finds started jobs whose worker was lost
(``jobs.dispatch.job_reap_lost``) and bulk submissions whose submitter died
before the broker confirmed them (``jobs.dispatch.job_reclaim_unconfirmed``);
every ``--reconcile-every`` seconds it takes a census of each lane queue against
the job table and publishes again the jobs whose message the broker lost
(``jobs.reconcile``); every ``--sweep-every`` seconds it counts workflow step ends
that no path counted yet (``jobs.workflows.workflow_sweep``); every
``--schedule-every`` seconds, and at the soonest fire time when that comes first, it
fires the tenants' schedules that are due (``schedules.firing.schedule_fire_due``:
exactly once per fire time, also with several dispatchers). Schedules fire here
rather than from Celery beat: beat keeps one schedule in one process, and two beats
fire everything twice; the dispatcher already runs in several copies, locks rows
with SKIP LOCKED, and its publish pass publishes each fired job like any other due
job.
It applies fair sharing (``jobs.fairness``): held jobs enter their tenant's
window as it frees, and every ``--promote-every`` seconds standard jobs are
promoted where the standard tier's starvation bound needs it. It keeps no
state of its own: everything it decides from is in the job table, so killing
it only delays work until another dispatcher (or its restart) runs a pass.
Several may run at once (rows are locked with SKIP LOCKED on PostgreSQL);
with SQLite run one.
"""
from __future__ import annotations

import logging
import signal
import time

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from jobs.dispatch import (
    job_promote_starved,
    job_publish_due,
    job_reap_lost,
    job_reclaim_unconfirmed,
)
from jobs.reconcile import job_reconcile
from jobs.signals import process_started
from jobs.workflows import workflow_sweep
from schedules.firing import (
    schedule_fire_due,
    schedule_observe_starts,
    schedule_seconds_to_next_fire,
)

logger = logging.getLogger(__name__)
#: Jobs published per pass at most.
LIMIT = 500


class Command(BaseCommand):
    help = "Publish jobs whose countdown/eta is due, and accepted jobs not yet published."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=0.2,
                            help="seconds between scans when nothing is due (default 0.2)")
        parser.add_argument("--reap-every", type=float, default=30.0,
                            help="seconds between scans for lost started jobs (default 30)")
        parser.add_argument("--sweep-every", type=float, default=5.0,
                            help="seconds between counts of workflow step ends no path "
                                 "counted yet, such as expiries (default 5)")
        parser.add_argument("--promote-every", type=float, default=1.0,
                            help="seconds between checks of the standard tier's starvation "
                                 "bound (default 1)")
        parser.add_argument("--reconcile-every", type=float, default=30.0,
                            help="seconds between censuses of the lane queues against the "
                                 "job table (default 30; 0: never)")
        parser.add_argument("--schedule-every", type=float, default=1.0,
                            help="seconds between passes over the schedules that are due "
                                 "(default 1)")
        parser.add_argument("--once", action="store_true", help="one scan, then exit")

    def handle(self, *args, interval: float, reap_every: float, promote_every: float,
               reconcile_every: float, sweep_every: float, schedule_every: float,
               once: bool, **options):
        stopping = False
        next_reap = next_promote = next_sweep = next_schedule = 0.0
        # The first census waits a full period: a dispatcher (re)started with the
        # rest of the platform lets the management API's figures settle first.
        next_reconcile = time.monotonic() + reconcile_every

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        if not once:
            process_started.send(sender=self.__class__, role="dispatcher")
        while not stopping:
            close_old_connections()
            if time.monotonic() >= next_reap:
                next_reap = time.monotonic() + reap_every
                try:
                    job_reclaim_unconfirmed()
                    requeued, dead = job_reap_lost()
                except Exception:
                    logger.exception("scan for lost jobs failed")
                else:
                    if requeued or dead:
                        logger.warning("lost jobs: %d published again, %d dead", requeued, dead)
            if reconcile_every > 0 and time.monotonic() >= next_reconcile:
                next_reconcile = time.monotonic() + reconcile_every
                try:
                    job_reconcile()
                except Exception:
                    logger.exception("census of the lane queues failed")
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + sweep_every
                try:
                    workflow_sweep()
                except Exception:
                    logger.exception("workflow sweep failed")
            if time.monotonic() >= next_schedule:
                next_schedule = time.monotonic() + schedule_every
                try:
                    fired = schedule_fire_due()
                    schedule_observe_starts()
                    # Wake at the soonest fire time, not up to a pass later. One still
                    # due after the pass (another dispatcher has it, or it failed)
                    # waits for the next pass: never a tight loop.
                    soonest = schedule_seconds_to_next_fire()
                    if soonest:
                        next_schedule = min(next_schedule, time.monotonic() + soonest)
                except Exception:
                    logger.exception("schedule pass failed")
                else:
                    if fired.fired or fired.skipped or fired.buffered:
                        logger.info("schedules: %d fired, %d skipped, %d buffered",
                                    fired.fired, fired.skipped, fired.buffered)
            if time.monotonic() >= next_promote:
                next_promote = time.monotonic() + promote_every
                try:
                    job_promote_starved()
                except Exception:
                    logger.exception("starvation check failed")
            try:
                published = job_publish_due(limit=LIMIT)
            except Exception:  # broker or database away: say so, wait, try again
                logger.exception("dispatch scan failed; retrying in 2 s")
                published = 0
                time.sleep(2)
            if published:
                logger.info("published %d due job(s)", published)
            if once:
                break
            # A full pass means more is due at once: go again. Otherwise wait,
            # also after releasing a few held jobs (windows refill every tick).
            if published < LIMIT:
                time.sleep(max(0.0, min(interval, next_schedule - time.monotonic())))
