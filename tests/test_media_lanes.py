"""The field report's collision, on the real broker with real workers: a hundred
10 MB uploads and a mass upload of a thousand small files, submitted together.

In the report, large uploads and a mass upload of small files broke each other.
Here each upload's lane follows its size (``SWITCHYARD_MEDIA_SLOW_LANE_BYTES``,
1 MiB): the hundred large ones, each its own job, queue in ``slow``; the
thousand small ones, submitted as one batch (chunks of 50: 10 MB per chunk,
under ``SWITCHYARD_MEDIA_QUICK_CHUNK_BYTES``), in ``quick``. Both lanes work at
once, and the small files are all done long before the large ones are.

The mass upload is a batch, as the field report's authors ended up doing: as
a thousand separate jobs, each small file would pay a job's fixed cost (its
record, its message, its events) that is on a par with the file's own work.
"""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from jobs.models import Job
from jobs.submission import job_submit
from media.models import File
from tenants.services import tenant_create
from tests import media_support as img
from tests.media_support import put_import
from tests.processes import wait_until
from tests.test_lanes import consumers_on

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]

media_dirs = img.media_dirs  # the fixture

LARGE, SMALL = 100, 1000


def deployed_lane(start_role, management, lane: str, concurrency: int):
    """A lane's worker as deployed: database connections kept (60 s), not one per task."""
    worker = start_role("worker", lane, DATABASE_CONN_MAX_AGE="60",
                        **{f"SWITCHYARD_{lane.upper()}_CONCURRENCY": str(concurrency)})
    wait_until(lambda: consumers_on(management, lane) >= 1, 60, f"a consumer on {lane}",
               roles=[worker])
    return worker


def test_large_uploads_and_a_mass_of_small_ones_both_progress_small_first(
        transactional_db, media_dirs, start_role, management):
    # Given a tenant with one ~10 MB and one ~200 KB photo in its import folder,
    # and both lanes served as deployed by default (slow 2 processes, quick 4)
    tenant, key = tenant_create(name="studio", tier="standard")
    large = put_import("studio", "large.jpg", img.jpeg_of_about(10_000_000))
    small = put_import("studio", "small.jpg", img.jpeg_of_about(200_000, seed=5))
    assert large.stat().st_size > 9_000_000 and small.stat().st_size < 250_000
    roles = [deployed_lane(start_role, management, "slow", concurrency=2),
             deployed_lane(start_role, management, "quick", concurrency=4),
             start_role("dispatcher")]

    # When 100 large uploads and a batch of 1,000 small ones are submitted together
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    large_ids = []
    for i in range(LARGE):
        job, _ = job_submit(tenant=tenant, task="media.upload", params={"items": [
            {"source": "large.jpg", "folder": "shoot", "name": f"large-{i:03d}.jpg"}]})
        large_ids.append(job.id)
        if i == 10:
            resp = client.post("/api/v1/batches", {"task": "media.upload", "chunk_size": 50,
                                                   "items": [{"source": "small.jpg",
                                                              "folder": "shoot",
                                                              "name": f"small-{n:04d}.jpg"}
                                                             for n in range(SMALL)]},
                               format="json")
            assert resp.status_code == 202, resp.json()
            assert resp.json()["lane"] == "quick"
    small_ids = list(Job.objects.filter(batch_id=resp.json()["id"]).values_list("id", flat=True))

    # Then every upload succeeds: a thousand small files and a hundred large ones
    everything = large_ids + small_ids
    wait_until(lambda: not Job.objects.filter(id__in=everything,
                                              status__in=("queued", "started")).exists(),
               600, "all 1,100 uploads", interval=1.0, roles=roles)
    jobs = {job.id: job for job in Job.objects.filter(id__in=everything)}
    assert [j.error for j in jobs.values() if j.status != "succeeded"] == []
    assert {jobs[i].lane for i in large_ids} == {"slow"}
    assert {jobs[i].lane for i in small_ids} == {"quick"}
    assert sum(jobs[i].result["succeeded"] for i in small_ids) == SMALL
    assert File.objects.filter(tenant=tenant, state="active").count() == LARGE + SMALL

    large_done = sorted(jobs[i].finished_at for i in large_ids)
    small_done = sorted(jobs[i].finished_at for i in small_ids)
    # both lanes made progress at once: large uploads finished while small ones ran
    assert sum(1 for t in large_done if t < small_done[-1]) >= 5, (large_done, small_done[-1])
    # and the small ones all finished first
    assert small_done[-1] < large_done[-1]

    start = min(j.submitted_at for j in jobs.values())
    print(f"\nall 1,000 small files done at {(small_done[-1] - start).total_seconds():.1f} s, "
          f"all 100 large ones at {(large_done[-1] - start).total_seconds():.1f} s; "
          f"{sum(1 for t in large_done if t < small_done[-1])} large ones done meanwhile")
