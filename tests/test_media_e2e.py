"""The media workload through the real broker, worker processes and dispatcher.

Images are drawn by Pillow at test time (tests/media_support.py). What a user
notices: uploaded images become files with thumbnails, bad ones are refused with
a reason, every operation does what it says once (a rerun duplicates nothing),
the trash can be emptied by beat, a batch reports the files that failed.
"""
from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from PIL import Image
from rest_framework.test import APIClient

from jobs.models import Job
from media import services
from media.models import File
from tenants.services import tenant_create
from tests import media_support as img
from tests.media_support import put_import, stored_files
from tests.processes import wait_until
from tests.test_lanes import start_lane

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]

media_dirs = img.media_dirs  # the fixture
FINISHED = ("succeeded", "failed", "dead", "expired", "cancelled")


@pytest.fixture
def acme(transactional_db, media_dirs):
    tenant, key = tenant_create(name="acme", tier="premium")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    client.tenant = tenant
    return client


def finished(job_ids, timeout: float, roles) -> dict[str, Job]:
    ids = [str(i) for i in job_ids]
    wait_until(lambda: Job.objects.filter(id__in=ids, status__in=FINISHED).count() == len(ids),
               timeout, f"{len(ids)} jobs to finish", interval=0.2, roles=roles)
    return {str(job.id): job for job in Job.objects.filter(id__in=ids)}


def run_job(client, task: str, roles, **item) -> Job:
    resp = client.post("/api/v1/jobs", {"task": task, "params": {"items": [item]}},
                       format="json")
    assert resp.status_code == 202, resp.json()
    return finished([resp.json()["id"]], 60, roles)[resp.json()["id"]]


def files(client, **query) -> dict[str, dict]:
    body = client.get("/api/v1/media/files", {"recursive": "true", **query}).json()
    return {f["path"]: f for f in body["results"]}


def test_uploads_become_files_with_thumbnails_and_bad_ones_are_refused(acme, start_role,
                                                                       management, settings):
    worker = start_lane(start_role, management, "quick", concurrency=2)
    uploads = {
        "photo.jpg": img.jpeg(640, 480),
        "drawing.jpg": img.png(320, 200),       # a PNG under a .jpg name: judged by content
        "sticker.webp": img.webp(300, 300),
        "portrait.jpg": img.jpeg(600, 300, orientation=6),  # stored landscape, shown portrait
        "broken.jpg": img.truncated_jpeg(),
        "notes.png": img.not_an_image(),
        "bomb.png": img.bomb_png(),
    }
    resp = acme.post("/api/v1/media/uploads", {
        "folder": "2026/trip",
        "files": [SimpleUploadedFile(name, data) for name, data in uploads.items()],
    }, format="multipart")
    assert resp.status_code == 202, resp.json()
    answers = {a["name"]: a for a in resp.json()}
    assert {a["job"]["lane"] for a in answers.values()} == {"quick"}  # all small
    jobs = finished([a["job"]["id"] for a in answers.values()], 60, [worker])

    def job_of(name):
        return jobs[answers[name]["job"]["id"]]

    for name in ("photo.jpg", "drawing.jpg", "sticker.webp", "portrait.jpg"):
        assert job_of(name).status == "succeeded", job_of(name).error
    assert "corrupt or truncated JPEG" in job_of("broken.jpg").error
    assert "not a JPEG, PNG or WebP image" in job_of("notes.png").error
    assert "decompression bomb refused" in job_of("bomb.png").error
    assert all(job_of(n).status == "failed" and job_of(n).attempts == 1
               for n in ("broken.jpg", "notes.png", "bomb.png"))

    listed = files(acme, folder="2026")
    assert sorted(listed) == ["2026/trip/drawing.jpg", "2026/trip/photo.jpg",
                              "2026/trip/portrait.jpg", "2026/trip/sticker.webp"]
    assert listed["2026/trip/drawing.jpg"]["content_type"] == "image/png"
    assert listed["2026/trip/sticker.webp"]["content_type"] == "image/webp"
    portrait = listed["2026/trip/portrait.jpg"]
    assert (portrait["width"], portrait["height"]) == (300, 600)
    edges = [int(e) for e in settings.SWITCHYARD_MEDIA_THUMBNAIL_SIZES]
    assert sorted(int(e) for e in portrait["thumbnails"]) == edges
    small = portrait["thumbnails"][str(edges[0])]
    assert (small["width"], small["height"]) == (edges[0] // 2, edges[0])
    thumb = acme.get(small["url"])
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(b"".join(thumb.streaming_content))).size == (
        edges[0] // 2, edges[0])
    original = acme.get(listed["2026/trip/photo.jpg"]["content_url"])
    assert b"".join(original.streaming_content) == uploads["photo.jpg"]
    # Nothing of the refused files stays behind, staging included
    assert not [key for key in stored_files("acme") if key.startswith("staging/")]
    # each thumbnail is stored once; a size the original already fits is the original
    keys = {t["key"] for f in File.objects.all() for t in f.thumbnails.values()}
    keys |= set(File.objects.values_list("storage_key", flat=True))
    assert sorted(f"acme/{k}" for k in stored_files("acme")) == sorted(keys)
    # 4 originals; photo (640 px) fits 1024, drawing and sticker (320, 300 px) fit 512 and
    # 1024; the portrait is turned by EXIF, so every size of it is drawn upright
    assert edges == [128, 512, 1024] and len(keys) == 4 + (2 + 1 + 1 + 3)


def test_every_file_operation_through_the_api(acme, start_role, management):
    quick = start_lane(start_role, management, "quick", concurrency=2)
    roles = [quick]
    put_import("acme", "cam/a.jpg", img.jpeg(500, 400, seed=1))
    put_import("acme", "cam/b.jpg", img.jpeg(500, 400, seed=2))
    a = run_job(acme, "media.upload", roles, source="cam/a.jpg", folder="album")
    b = run_job(acme, "media.upload", roles, source="cam/b.jpg", folder="album")
    assert (a.status, b.status) == ("succeeded", "succeeded")
    a_id = a.result["results"][0]["result"]["file"]
    b_id = b.result["results"][0]["result"]["file"]

    # rename into a clash: refused unless asked to resolve it
    refused = run_job(acme, "media.rename", roles, file=b_id, name="a.jpg")
    assert refused.status == "failed" and "'album/a.jpg' already exists" in refused.error
    run_job(acme, "media.rename", roles, file=b_id, name="a.jpg", on_clash="rename")
    assert sorted(files(acme)) == ["album/a (2).jpg", "album/a.jpg"]

    # copy (bytes and thumbnails) and move
    copy = run_job(acme, "media.copy", roles, file=a_id, to_folder="shared")
    copy_id = copy.result["results"][0]["result"]["file"]
    run_job(acme, "media.move", roles, file=b_id, to_folder="keep", name="b.jpg")
    listed = files(acme)
    assert sorted(listed) == ["album/a.jpg", "keep/b.jpg", "shared/a.jpg"]
    assert listed["shared/a.jpg"]["checksum"] == listed["album/a.jpg"]["checksum"]
    assert listed["shared/a.jpg"]["id"] == copy_id != a_id

    # trash frees the name; restore brings it back; a clash on restore can be resolved
    run_job(acme, "media.trash", roles, file=a_id)
    assert sorted(files(acme)) == ["keep/b.jpg", "shared/a.jpg"]
    assert list(files(acme, state="trashed")) == ["album/a.jpg"]
    run_job(acme, "media.copy", roles, file=copy_id, to_folder="album")  # takes album/a.jpg
    clash = run_job(acme, "media.restore", roles, file=a_id)
    assert clash.status == "failed" and "already exists" in clash.error
    run_job(acme, "media.restore", roles, file=a_id, on_clash="rename")
    assert "album/a (2).jpg" in files(acme)

    # delete removes the bytes and thumbnails for good
    keys_before = stored_files("acme")
    record = File.objects.get(id=a_id)
    own = {record.storage_key, *(t["key"] for t in record.thumbnails.values())}
    done = run_job(acme, "media.delete", roles, file=a_id)
    assert done.status == "succeeded"
    gone = {f"acme/{k}" for k in keys_before if k not in stored_files("acme")}
    assert gone == own and record.storage_key in own
    assert acme.get(f"/api/v1/media/files/{a_id}").json()["state"] == "deleted"
    assert acme.get(f"/api/v1/media/files/{a_id}/content").status_code == 404
    again = run_job(acme, "media.restore", roles, file=a_id)
    assert again.status == "failed" and "permanently deleted" in again.error


def test_a_batch_with_some_bad_files_reports_each_and_does_the_rest(acme, start_role,
                                                                     management):
    roles = [start_lane(start_role, management, "quick", concurrency=2),
             start_lane(start_role, management, "slow", concurrency=1),
             start_role("dispatcher")]
    bad = {3: img.truncated_jpeg(), 7: b"", 11: img.not_an_image(), 17: img.bomb_png()}
    for i in range(24):
        put_import("acme", f"drop/{i:02d}.jpg", bad.get(i, img.jpeg(320, 240, seed=i)))
    items = [{"source": f"drop/{i:02d}.jpg", "folder": "import"} for i in range(24)]
    items.append({"source": "drop/05.jpg", "folder": "import"})  # a name clash: refused
    resp = acme.post("/api/v1/batches", {"task": "media.upload", "items": items,
                                         "chunk_size": 5}, format="json")
    assert resp.status_code == 202, resp.json()
    batch_url = f"/api/v1/batches/{resp.json()['id']}"
    wait_until(lambda: acme.get(batch_url).json()["pending"] == 0, 90, "the import batch",
               interval=0.3, roles=roles)
    batch = acme.get(batch_url).json()
    assert (batch["status"], batch["done"], batch["failed"]) == (
        "completed_with_failures", 20, 5)
    reasons = {f["index"]: f["error"] for f in batch["failures"]}
    assert sorted(reasons) == [3, 7, 11, 17, 24]
    assert "corrupt or truncated JPEG" in reasons[3]
    assert "empty file (0 bytes)" in reasons[7]
    assert "not a JPEG, PNG or WebP image" in reasons[11]
    assert "decompression bomb refused" in reasons[17]
    assert "'import/05.jpg' already exists" in reasons[24]
    assert len(files(acme, folder="import")) == 20

    # The whole folder, in one operation: WebP thumbnails for each file
    resp = acme.post("/api/v1/media/operations", {"operation": "thumbnail", "folder": "import",
                                                  "format": "WEBP", "chunk_size": 4},
                     format="json")
    assert resp.status_code == 202 and resp.json()["total"] == 20
    batch_url = resp.json()["status_url"]
    wait_until(lambda: acme.get(batch_url).json()["pending"] == 0, 90, "the thumbnail batch",
               interval=0.3, roles=roles)
    assert acme.get(batch_url).json()["status"] == "succeeded"
    formats = {t["format"] for f in files(acme, folder="import").values()
               for t in f["thumbnails"].values()}
    assert formats == {"WEBP"}
    # the JPEG thumbnails were replaced, not kept beside the new ones
    assert not [k for k in stored_files("acme") if "/thumb-" in k and k.endswith(".jpg")]

    # and a whole folder to the trash
    resp = acme.post("/api/v1/media/operations", {"operation": "trash", "folder": "import"},
                     format="json")
    assert resp.status_code == 202 and resp.json()["lane"] == "quick"
    wait_until(lambda: acme.get(resp.json()["status_url"]).json()["status"] == "succeeded", 60,
               "the trash batch", interval=0.3, roles=roles)
    assert files(acme, folder="import") == {}
    assert len(files(acme, folder="import", state="trashed")) == 20


def test_reruns_of_the_same_jobs_duplicate_nothing(acme, start_role, management):
    # Given uploads, a copy, thumbnails and a move resolved by renaming, all done
    roles = [start_lane(start_role, management, "quick", concurrency=2),
             start_role("dispatcher")]
    put_import("acme", "a.jpg", img.jpeg(400, 300))
    put_import("acme", "b.jpg", img.jpeg(400, 300, seed=9))
    up_a = run_job(acme, "media.upload", roles, source="a.jpg", folder="x")
    run_job(acme, "media.upload", roles, source="b.jpg", folder="y", name="a.jpg")
    a_id = up_a.result["results"][0]["result"]["file"]
    jobs = [
        up_a,
        run_job(acme, "media.copy", roles, file=a_id, to_folder="copies"),
        run_job(acme, "media.thumbnail", roles, file=a_id),
        run_job(acme, "media.move", roles, file=a_id, to_folder="y", on_clash="rename"),
    ]
    assert all(job.status == "succeeded" for job in jobs)
    rows, keys, paths = File.objects.count(), stored_files("acme"), sorted(files(acme))
    assert paths == ["copies/a.jpg", "y/a (2).jpg", "y/a.jpg"]

    # When each job's message is delivered and run again, as after a worker died
    # between doing the work and acknowledging it
    Job.objects.filter(id__in=[j.id for j in jobs]).update(
        status="queued", published_at=None, finished_at=None, run_at=None)
    done = finished([j.id for j in jobs], 60, roles)

    # Then every rerun succeeded and nothing exists twice: no second copy, no
    # second set of thumbnails, no "a (3).jpg"
    assert all(job.status == "succeeded" and job.attempts == 2 for job in done.values())
    assert File.objects.count() == rows
    assert stored_files("acme") == keys
    assert sorted(files(acme)) == paths


def test_beat_purges_the_trash_after_the_retention_period(acme, start_role, management,
                                                         tmp_path):
    tenant = acme.tenant
    put_import("acme", "old.jpg", img.jpeg(200, 200, seed=1))
    put_import("acme", "new.jpg", img.jpeg(200, 200, seed=2))
    old = services.file_import(tenant=tenant, source="old.jpg", folder="", operation="o")
    new = services.file_import(tenant=tenant, source="new.jpg", folder="", operation="n")
    kept = services.file_import(tenant=tenant, source="new.jpg", folder="live", operation="k")
    services.file_trash(file=old)
    services.file_trash(file=new)
    File.objects.filter(id=old.id).update(trashed_at=timezone.now() - dt.timedelta(days=31))
    keys_of_old = [k for k in stored_files("acme") if str(old.id) in k]
    assert keys_of_old

    # beat fires the purge every second here (hourly by default)
    roles = [start_lane(start_role, management, "slow", concurrency=1),
             start_role("beat", SWITCHYARD_MEDIA_PURGE_EVERY="1",
                        SWITCHYARD_VAR_DIR=str(tmp_path / "var"))]
    wait_until(lambda: File.objects.get(id=old.id).state == "deleted", 60, "the purge",
               interval=0.3, roles=roles)
    assert [k for k in stored_files("acme") if str(old.id) in k] == []
    assert File.objects.get(id=new.id).state == "trashed"
    assert File.objects.get(id=kept.id).state == "active"
    purge = Job.objects.filter(task="media.purge_trashed", status="succeeded").first()
    assert purge is not None and purge.lane == "slow"
    assert not Path(settings.SWITCHYARD_MEDIA_ROOT, "acme", "files",
                    old.id.hex[:2], str(old.id)).exists()
