"""``manage.py dlq list|show|replay|purge --lane LANE``: a lane's dead-letter queue.

Examples::

    python platform/manage.py dlq list --lane slow
    python platform/manage.py dlq show --lane slow 5b0c...e1
    python platform/manage.py dlq replay --lane slow 5b0c...e1   # or --all
    python platform/manage.py dlq purge --lane slow --yes

``list`` and ``show`` consume nothing. ``replay`` puts each job's own record
back to ``queued`` and publishes it again (see ``jobs.dlq``). Exit codes: 0
done; 1 something asked for was not found or not replayed, or ``purge``
without ``--yes``; 2 RabbitMQ unreachable. Runbook:
docs/runbooks/poison-messages.md.
"""
from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from jobs import dlq
from routing import topology
from routing.broker import BrokerUnreachable


class Command(BaseCommand):
    help = "Inspect, replay or purge a lane's dead-letter queue (<lane>.dead)."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        lanes = sorted(topology.LANES_BY_NAME)

        def action(name: str, help_text: str):
            sub = actions.add_parser(name, help=help_text, description=help_text)
            sub.add_argument("--lane", required=True, choices=lanes,
                             help="the lane whose <lane>.dead queue to use")
            return sub

        listing = action("list", "one line per dead message: job, task, tenant, tier, why")
        listing.add_argument("--limit", type=int, default=50,
                             help="show at most this many messages (default 50)")
        show = action("show", "everything about one dead message and its job record")
        show.add_argument("job_id", help="the job id (= the Celery task id)")
        replay = action("replay", "put the jobs back to queued and publish them again")
        replay.add_argument("job_ids", nargs="*", metavar="JOB_ID")
        replay.add_argument("--all", action="store_true", dest="replay_all",
                            help="replay every message of the queue")
        purge = action("purge", "delete every message of the queue (job records stay)")
        purge.add_argument("--yes", action="store_true", help="really purge")

    def handle(self, *args, action: str, lane: str, **options):
        try:
            return getattr(self, f"_{action}")(lane, **options)
        except BrokerUnreachable as exc:
            raise CommandError(str(exc), returncode=2) from exc

    def _list(self, lane: str, *, limit: int, **_):
        total, messages = dlq.dlq_peek(lane, limit=limit)
        queue = dlq.dead_queue(lane)
        self.stdout.write(f"{queue}: {total} message(s)" +
                          (f", first {len(messages)} shown" if total > len(messages) else ""))
        for m in messages:
            job = m.job
            tenant = job.tenant_name if job else m.headers.get("tenant", "?")
            tier = job.tier if job else m.headers.get("tier", "?")
            status = job.status if job else "no job record"
            self.stdout.write(
                f"{m.position:>4}  {m.job_id or '-'}  {m.task}  tenant={tenant} tier={tier} "
                f"job={status} deaths={m.deaths}  {m.reason[:160]}")
        if total:
            self.stdout.write(f"details: python platform/manage.py dlq show --lane {lane} JOB_ID")

    def _show(self, lane: str, *, job_id: str, **_):
        message = dlq.dlq_find(lane, job_id)
        if message is None:
            raise CommandError(f"no message of job {job_id} in {dlq.dead_queue(lane)}",
                               returncode=1)
        self.stdout.write(json.dumps(message.summary(), indent=2, default=str))

    def _replay(self, lane: str, *, job_ids: list[str], replay_all: bool, **_):
        if bool(job_ids) == replay_all:
            raise CommandError("give JOB_ID ... or --all (not both)", returncode=1)
        report = dlq.dlq_replay(lane, job_ids=job_ids, replay_all=replay_all)
        for job_id in report.replayed:
            self.stdout.write(f"replayed {job_id}: queued and published again")
        for what, why in report.skipped:
            self.stderr.write(f"skipped {what}: {why}")
        for job_id in report.not_found:
            self.stderr.write(f"not found in {dlq.dead_queue(lane)}: {job_id}")
        self.stdout.write(f"{len(report.replayed)} replayed, {len(report.skipped)} skipped, "
                          f"{len(report.not_found)} not found")
        if report.skipped or report.not_found:
            raise CommandError("not everything asked for was replayed", returncode=1)

    def _purge(self, lane: str, *, yes: bool, **_):
        queue = dlq.dead_queue(lane)
        if not yes:
            depth = dlq.dlq_depth(lane)
            raise CommandError(f"{queue} holds {depth} message(s); purging deletes them for "
                               f"good. Run again with --yes to purge.", returncode=1)
        purged = dlq.dlq_purge(lane)
        self.stdout.write(f"purged {purged} message(s) from {queue}")
