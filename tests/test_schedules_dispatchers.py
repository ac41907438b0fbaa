"""Two real dispatcher processes fire the same schedules: each fire time, one job.

The dispatchers are the role script (``deploy/bin/dispatcher``) on this run's vhost and
database, passing over the schedules every 0.1 s each, so both see every fire time
as it comes due; the database (row locks, and the unique fire record) keeps one.
One of them is killed mid-test with SIGKILL and the survivor carries on alone.
"""
from __future__ import annotations

import datetime as dt
import os
import signal
import time

import pytest

from jobs.models import Job
from schedules.models import ScheduleFire
from schedules.services import schedule_create
from switchyard.clock import platform_now
from tenants.services import tenant_create
from tests.processes import wait_until

pytestmark = [pytest.mark.rabbitmq]

EVERY = 10


def test_two_dispatchers_fire_each_fire_time_exactly_once(start_role):
    # Given five schedules every 10 s, and two dispatchers passing over them every 0.1 s
    tenant, _ = tenant_create(name="twice", tier="premium")
    now = platform_now()
    start = (now + dt.timedelta(seconds=3)).replace(microsecond=0)
    schedules = [schedule_create(tenant=tenant, task="demo.quick_task", params={"x": i},
                                 every=EVERY, start_at=start, overlap="allow")
                 for i in range(5)]
    roles = [start_role("dispatcher", name=f"dispatcher-{n}", SWITCHYARD_SCHEDULE_EVERY="0.1",
                        SWITCHYARD_DISPATCH_INTERVAL="0.1") for n in (1, 2)]

    # When three fire times pass with both running, then a fourth after one is killed
    def fired_times(count):
        return ScheduleFire.objects.filter(schedule__in=schedules).values(
            "fire_at").distinct().count() >= count

    wait_until(lambda: fired_times(3), timeout=60, what="three fire times", roles=roles,
               interval=0.2)
    os.killpg(roles[0].proc.pid, signal.SIGKILL)
    wait_until(lambda: fired_times(4), timeout=30, what="a fourth fire time", roles=roles[1:],
               interval=0.2)
    time.sleep(1)  # any late duplicate would be written by now

    # Then each schedule has one record per fire time, each with its one job, published
    for schedule in schedules:
        fires = list(ScheduleFire.objects.filter(schedule=schedule).order_by("fire_at"))
        expected = [start + dt.timedelta(seconds=EVERY * k) for k in range(len(fires))]
        assert [f.fire_at for f in fires] == expected
        assert len(fires) >= 4
        assert all(f.outcome == "fired" and f.job_id for f in fires)
        assert len({f.job_id for f in fires}) == len(fires)
    jobs = Job.objects.filter(tenant=tenant)
    assert jobs.count() == ScheduleFire.objects.filter(schedule__in=schedules).count()
    wait_until(lambda: not jobs.filter(published_at__isnull=True, run_at__lte=platform_now()
                                       - dt.timedelta(seconds=2)).exists(),
               timeout=10, what="the fired jobs published", roles=roles[1:])


def test_the_dispatcher_wakes_at_each_fire_time_not_at_its_next_pass(start_role):
    # Given a dispatcher passing over the schedules only every 3 s (its default tick of
    # 0.2 s for publishing), and five schedules whose first fire times are 1 s apart,
    # the first more than a pass away (so a pass has seen them all)
    role = start_role("dispatcher", SWITCHYARD_SCHEDULE_EVERY="3")
    tenant, _ = tenant_create(name="prompt", tier="premium")
    first = platform_now() + dt.timedelta(seconds=6.5)
    schedules = [schedule_create(tenant=tenant, task="demo.quick_task", params={"x": i},
                                 every=60, start_at=first + dt.timedelta(seconds=i))
                 for i in range(5)]
    # When each fire time has passed
    wait_until(lambda: Job.objects.filter(tenant=tenant, published_at__isnull=False).count()
               == 5, timeout=30, what="five fired jobs published", roles=[role], interval=0.2)
    # Then each job was published within a tick of its fire time, not up to 3 s after it
    late = [(f.job.published_at - f.fire_at).total_seconds()
            for f in ScheduleFire.objects.filter(schedule__in=schedules).select_related("job")]
    assert len(late) == 5 and max(late) < 0.6, late
