"""``manage.py drain LANE``: stop a lane's workers consuming, finish running tasks, stop them.

Examples::

    python platform/manage.py drain slow                 # then the workers exit
    python platform/manage.py drain slow --no-shutdown   # keep them idle, not consuming
    python platform/manage.py drain slow --resume        # consume again

Exit codes: 0 drained (and stopped, unless ``--no-shutdown``), or no worker
consumed the lane; 1 tasks still running at ``--timeout`` (the workers stay
idle: wait and run it again, or ``--resume``), or a worker did not stop;
2 RabbitMQ unreachable. See ``switchyard.drain``.
"""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from kombu.exceptions import OperationalError

from routing import topology
from switchyard import drain


class Command(BaseCommand):
    help = "Drain a lane: stop consuming, let running tasks finish, then stop its workers."

    def add_arguments(self, parser):
        parser.add_argument("lane_name", metavar="lane", choices=sorted(topology.LANES_BY_NAME))
        parser.add_argument("--timeout", type=float, default=None,
                            help="seconds to wait for running tasks (default: the lane's "
                            "hard time limit plus 60)")
        parser.add_argument("--no-shutdown", action="store_true",
                            help="leave the workers running, idle, not consuming the lane")
        parser.add_argument("--resume", action="store_true",
                            help="make the lane's running workers consume again, and exit")

    def handle(self, *args, lane_name: str, timeout: float | None, no_shutdown: bool,
               resume: bool, **options):
        lane = topology.lane(lane_name)
        try:
            if resume:
                workers = drain.resume(lane.name, lane.queue)
                if not workers:
                    raise CommandError(f"no worker of lane {lane} answers", returncode=1)
                self.stdout.write(f"{', '.join(workers)} consume {lane.queue} again")
                return
            result = drain.drain(lane.queue, timeout=timeout or lane.time_limit + 60,
                                 shutdown=not no_shutdown, progress=self.stdout.write)
        except OperationalError as exc:
            raise CommandError(f"RabbitMQ unreachable: {exc}", returncode=2) from exc
        if not result.workers:
            self.stdout.write(f"no worker consumes {lane.queue}: nothing to drain")
            return
        if not result.drained:
            running = "; ".join(f"{w}: {', '.join(ids)}" for w, ids in result.running.items())
            raise CommandError(
                f"timed out with tasks still running ({running}). The workers no longer "
                f"consume {lane.queue}; run this again to keep waiting, or resume with "
                f"`python platform/manage.py drain {lane} --resume`.", returncode=1)
        if no_shutdown:
            self.stdout.write(f"drained {lane.queue}: workers idle and not consuming")
            return
        if not result.stopped:
            raise CommandError("drained, but a worker still answers after its shutdown",
                               returncode=1)
        self.stdout.write(f"drained {lane.queue}: no task lost, {len(result.workers)} worker(s) "
                          "stopped")
