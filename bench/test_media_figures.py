"""Media figures: thumbnails per second and MB/s on the slow lane.

Run with ``make bench-media`` (not part of ``make test``: figures are measured, never
asserted beyond the run having worked). N JPEGs of about 2 MB are imported first (in
the test process, without thumbnails: set-up, not measured), then thumbnailed as one
batch (``media.thumbnail``, chunks of 10 files = 20 MB, so every chunk is slow-lane
work) by the slow lane's worker at its default concurrency (2), with the dispatcher
publishing the chunks. The clock runs from the batch's acceptance to its last chunk's
end. N is 1,000; ``SWITCHYARD_BENCH_QUICK=1`` runs 50 for a quick look.
Prints a table and writes ``var/bench/media.json``.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from jobs.models import Job
from media import services
from media.models import File
from tenants.models import Tenant
from tenants.services import tenant_create
from tests import media_support as img
from tests.media_support import put_import
from tests.processes import wait_until
from tests.test_lanes import start_lane

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]

media_dirs = img.media_dirs  # the fixture

QUICK = os.environ.get("SWITCHYARD_BENCH_QUICK", "") not in ("", "0")
FILES = 50 if QUICK else int(os.environ.get("BENCH_MEDIA_FILES", "1000"))
SLOW_CONCURRENCY = int(os.environ.get("SWITCHYARD_SLOW_CONCURRENCY", "2"))
CHUNK = 10
DISTINCT = 10  # distinct photos, each imported FILES / DISTINCT times
OUT = Path(__file__).resolve().parents[1] / "var" / "bench" / "media.json"


def test_media_figures(media_dirs, start_role, management):
    tenant, key = tenant_create(name="bench", tier="premium")
    Tenant.objects.filter(id=tenant.id).update(max_queued_jobs=10_000_000,
                                               submissions_per_minute=1_000_000)
    photos = [put_import("bench", f"photo-{i}.jpg", img.jpeg_of_about(2_000_000, seed=i))
              for i in range(min(DISTINCT, FILES))]
    ids = []
    for n in range(FILES):
        photo = photos[n % len(photos)]
        file = services.file_import(tenant=tenant, source=photo.name, folder="bench",
                                    name=f"{n:05d}.jpg", thumbnails=False, operation=f"b{n}")
        ids.append(str(file.id))
    total_bytes = sum(File.objects.filter(tenant=tenant).values_list("size", flat=True))

    roles = [start_lane(start_role, management, "slow", SLOW_CONCURRENCY),
             start_role("dispatcher")]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    started = time.perf_counter()
    resp = client.post("/api/v1/batches", {"task": "media.thumbnail", "chunk_size": CHUNK,
                                           "items": [{"file": i} for i in ids]}, format="json")
    assert resp.status_code == 202 and resp.json()["lane"] == "slow", resp.json()
    batch_id = resp.json()["id"]
    wait_until(lambda: not Job.objects.filter(batch_id=batch_id,
                                              status__in=("queued", "started")).exists(),
               3600, "the thumbnail batch", interval=0.5, roles=roles)
    elapsed = time.perf_counter() - started
    batch = client.get(f"/api/v1/batches/{batch_id}").json()
    assert (batch["done"], batch["failed"]) == (FILES, 0), batch["failures"][:3]
    chunks = Job.objects.filter(batch_id=batch_id)
    working = (max(c.finished_at for c in chunks) - min(c.started_at for c in chunks)
               ).total_seconds()
    sizes = settings.SWITCHYARD_MEDIA_THUMBNAIL_SIZES
    thumbs = sum(len(f.thumbnails) for f in File.objects.filter(tenant=tenant))

    figures = {
        "mode": "quick" if QUICK else "full",
        "cores": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "slow_concurrency": SLOW_CONCURRENCY,
        "files": FILES,
        "mean_file_bytes": total_bytes / FILES,
        "thumbnail_sizes": sizes,
        "thumbnails_made": thumbs,
        "chunk_size": CHUNK,
        "elapsed_s": elapsed,
        "first_start_to_last_end_s": working,
        "files_per_s": FILES / elapsed,
        "thumbnails_per_s": thumbs / elapsed,
        "mb_per_s": total_bytes / 1e6 / elapsed,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2))
    print(f"\n\nMedia figures ({figures['mode']}: {FILES} JPEGs of "
          f"{figures['mean_file_bytes'] / 1e6:.2f} MB, slow lane x{SLOW_CONCURRENCY}, "
          f"{figures['cores']} cores, load {figures['load_average_1m']:.1f})")
    rows = [
        ("thumbnail sizes (longest edge, px)", ",".join(map(str, sizes))),
        ("batch accepted to done, s", f"{elapsed:.1f}"),
        ("first chunk start to last chunk end, s", f"{working:.1f}"),
        ("files per second", f"{figures['files_per_s']:.1f}"),
        ("thumbnails per second", f"{figures['thumbnails_per_s']:.1f}"),
        ("MB/s of originals", f"{figures['mb_per_s']:.1f}"),
    ]
    for name, value in rows:
        print(f"{name:<42}{value:>14}")
