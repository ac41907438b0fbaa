"""``manage.py dispatch``: publish waiting jobs when due; find lost ones.

Runs as the ``dispatcher`` role. It publishes jobs whose countdown, eta or
retry backoff is due, batch chunks, and jobs the web could not publish; every
``--reap-every`` seconds it also finds started jobs whose worker was lost
(``jobs.services.job_reap_lost``) and bulk submissions whose submitter died
before the broker confirmed them (``jobs.bulk.job_reclaim_unconfirmed``).
Several may run at once (rows are locked with SKIP LOCKED on PostgreSQL);
with SQLite run one.
"""
from __future__ import annotations

import logging
import signal
import time

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from jobs.bulk import job_reclaim_unconfirmed
from jobs.services import job_publish_due, job_reap_lost

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Publish jobs whose countdown/eta is due, and accepted jobs not yet published."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=0.2,
                            help="seconds between scans when nothing is due (default 0.2)")
        parser.add_argument("--reap-every", type=float, default=30.0,
                            help="seconds between scans for lost started jobs (default 30)")
        parser.add_argument("--once", action="store_true", help="one scan, then exit")

    def handle(self, *args, interval: float, reap_every: float, once: bool, **options):
        stopping = False
        next_reap = 0.0

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
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
            try:
                published = job_publish_due()
            except Exception:  # broker or database away: say so, wait, try again
                logger.exception("dispatch scan failed; retrying in 2 s")
                published = 0
                time.sleep(2)
            if published:
                logger.info("published %d due job(s)", published)
            if once:
                break
            if not published:
                time.sleep(interval)
