"""The media app without the broker: images judged by content, thumbnails, paths
confined to the tenant, lanes by cost, the API's refusals, idempotent services.

Everything that runs through real workers is in test_media_e2e.py.
"""
from __future__ import annotations

import io
import os
import re
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from jobs.models import Batch, Job
from jobs.submission import job_submit
from media import services, storage
from media.images import ImageRefused, decode, shown_size, thumbnail
from media.models import File
from media.paths import PathRefused, clean_folder, clean_name, resolve_source
from tests import media_support as img
from tests.media_support import put_import, stored_files
from tests.test_api import client_for

media_dirs = img.media_dirs  # the fixture

LIMITS = {"max_bytes": 50 * 1024 * 1024, "max_pixels": 90_000_000}


# Images --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "fmt", "content_type"), [
    (img.jpeg(), "JPEG", "image/jpeg"),
    (img.png(), "PNG", "image/png"),
    (img.webp(), "WEBP", "image/webp"),
])
def test_images_are_recognised_by_content(data, fmt, content_type):
    decoded = decode(data, **LIMITS)
    assert (decoded.format, decoded.content_type) == (fmt, content_type)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty file (0 bytes)"),
    (img.not_an_image(), "not a JPEG, PNG or WebP image"),
    (img.truncated_jpeg(), "corrupt or truncated JPEG image"),
    (img.bomb_png(), "decompression bomb refused"),
    (img.bomb_png(10_000, 10_000), "decompression bomb refused"),
    (img.encode(Image.new("RGB", (20, 20)), "GIF"), "not a JPEG, PNG or WebP image"),
])
def test_bad_content_is_refused_with_its_reason(data, reason):
    with pytest.raises(ImageRefused, match=re.escape(reason)):
        decode(data, **LIMITS)


def test_a_bomb_is_refused_from_its_header_without_decoding():
    # 900 million claimed pixels; refused in well under the time a decode would take
    with pytest.raises(ImageRefused, match="900000000 pixels"):
        decode(img.bomb_png(), **LIMITS)


def test_the_pixel_limit_is_a_setting():
    with pytest.raises(ImageRefused, match="decompression bomb refused.* 100000 pixels"):
        decode(img.jpeg(400, 300), max_bytes=10**8, max_pixels=100_000)


def test_over_size_is_refused():
    with pytest.raises(ImageRefused, match="over the limit of 1000 bytes"):
        decode(img.jpeg(), max_bytes=1000, max_pixels=10**8)


def test_exif_orientation_is_honoured_and_aspect_kept():
    # A 400x200 landscape sensor image tagged "rotate 90 degrees clockwise"
    decoded = decode(img.jpeg(400, 200, orientation=6), **LIMITS)
    assert (decoded.width, decoded.height) == (200, 400)
    # The decoded image stays as stored (no full-size turned copy); each thumbnail is turned
    assert decoded.image.size == (400, 200) and decoded.orientation == 6
    data, thumb = thumbnail(decoded.image, edge=128, image_format="JPEG",
                            orientation=decoded.orientation)
    assert shown_size(thumb.size, decoded.orientation) == (64, 128)
    assert Image.open(io.BytesIO(data)).size == (64, 128)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_thumbnails_fit_the_edge_in_each_format_and_never_enlarge(fmt):
    decoded = decode(img.png(320, 200), **LIMITS)
    data, _ = thumbnail(decoded.image, edge=100, image_format=fmt)
    shown = Image.open(io.BytesIO(data))
    assert (shown.format, shown.size) == (fmt, (100, 63))  # 62.5 rounded: the aspect kept
    data, _ = thumbnail(decoded.image, edge=1024, image_format=fmt)
    assert Image.open(io.BytesIO(data)).size == (320, 200)


# Paths ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder", ["..", "a/../b", "../etc", "/etc", "/", "C:\\x", "a\\b",
                                    "a//b", "./a", "a/\x00b", " a"])
def test_folders_that_could_leave_the_storage_are_refused(folder):
    with pytest.raises(PathRefused) as refused:
        clean_folder(folder, field="to_folder")
    assert refused.value.field == "to_folder"


@pytest.mark.parametrize(("folder", "clean"), [("", ""), ("a/b/", "a/b"),
                                               ("2026/11 trip", "2026/11 trip"),
                                               ("사진/여름", "사진/여름")])
def test_folders_are_normalised(folder, clean):
    assert clean_folder(folder) == clean


@pytest.mark.parametrize("name", ["", "a/b.jpg", "..", ".", "a.jpg/", "/a.jpg"])
def test_names_are_one_segment(name):
    with pytest.raises(PathRefused):
        clean_name(name)


def test_import_sources_stay_in_the_tenants_import_folder(media_dirs, tmp_path):
    put_import("acme", "in/a.jpg", img.jpeg())
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(img.jpeg())
    link_dir = Path(settings.SWITCHYARD_MEDIA_IMPORT_ROOT) / "acme"
    os.symlink(outside, link_dir / "out.jpg")
    os.symlink(link_dir / "in" / "a.jpg", link_dir / "inside.jpg")
    put_import("globex", "theirs.jpg", img.jpeg())

    assert resolve_source("in/a.jpg", tenant_name="acme").name == "a.jpg"
    assert resolve_source("inside.jpg", tenant_name="acme").name == "a.jpg"
    for source, reason in [("out.jpg", "leads outside your import folder"),
                           ("../globex/theirs.jpg", "'..' is refused"),
                           (str(outside), "absolute paths are refused"),
                           ("in/missing.jpg", "no file at")]:
        with pytest.raises(PathRefused, match=reason):
            resolve_source(source, tenant_name="acme")


# The API's refusals -------------------------------------------------------------------------

@pytest.fixture
def acme(db, media_dirs):
    return client_for("acme", "premium")


def _upload(client, *files, **fields):
    return client.post("/api/v1/media/uploads", {"files": list(files), **fields},
                       format="multipart")


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({"task": "media.move", "params": {"items": [{"file": str(uuid.uuid4()),
                                                  "to_folder": "../other"}]}},
     "params.items.0.to_folder", "'..' is refused"),
    ({"task": "media.rename", "params": {"items": [{"file": str(uuid.uuid4()),
                                                    "name": "sub/x.jpg"}]}},
     "params.items.0.name", "one file name"),
    ({"task": "media.copy", "params": {"items": [{"file": str(uuid.uuid4()),
                                                  "to_folder": "/etc"}]}},
     "params.items.0.to_folder", "absolute paths are refused"),
    ({"task": "media.upload", "params": {"items": [{"source": "../../etc/passwd"}]}},
     "params.items.0.source", "'..' is refused"),
    ({"task": "media.upload", "params": {"items": [{"source": "out.jpg"}]}},
     "params.items.0.source", "leads outside your import folder"),
    ({"task": "media.trash",
      "params": {"items": [{"file": "not-a-file-id-but-long-enough-xyzw"}]}},
     "params.items.0.file", "is not a file id"),
])
def test_paths_out_of_the_tenants_storage_are_400_naming_the_field(acme, tmp_path, body, field,
                                                                    reason):
    client, _ = acme
    (tmp_path / "x.jpg").write_bytes(img.jpeg())
    (Path(settings.SWITCHYARD_MEDIA_IMPORT_ROOT) / "acme").mkdir(parents=True)
    os.symlink(tmp_path / "x.jpg", Path(settings.SWITCHYARD_MEDIA_IMPORT_ROOT) / "acme/out.jpg")
    resp = client.post("/api/v1/jobs", body, format="json")
    assert resp.status_code == 400, resp.json()
    assert reason in resp.json()["errors"][field][0], resp.json()
    assert Job.objects.count() == 0


def test_a_batch_names_the_bad_item(acme):
    client, _ = acme
    put_import("acme", "ok.jpg", img.jpeg())
    items = [{"source": "ok.jpg", "name": f"{i}.jpg"} for i in range(5)]
    items[3] = {"source": "ok.jpg", "folder": "a/../../b"}
    resp = client.post("/api/v1/batches", {"task": "media.upload", "items": items}, format="json")
    assert resp.status_code == 400
    assert "'..' is refused" in resp.json()["errors"]["items.3.folder"][0]
    assert Batch.objects.count() == 0


def test_operations_refuse_a_folder_outside_and_an_empty_selection(acme):
    client, _ = acme
    resp = client.post("/api/v1/media/operations",
                       {"operation": "trash", "folder": "../globex"}, format="json")
    assert resp.status_code == 400 and "'..' is refused" in resp.json()["errors"]["folder"][0]
    resp = client.post("/api/v1/media/operations",
                       {"operation": "move", "folder": "", "to_folder": "/tmp"}, format="json")
    assert "absolute paths are refused" in resp.json()["errors"]["to_folder"][0]
    resp = client.post("/api/v1/media/operations", {"operation": "trash", "folder": "empty"},
                       format="json")
    assert resp.status_code == 400 and "no active files" in resp.json()["errors"]["folder"][0]
    resp = client.post("/api/v1/media/operations", {"operation": "copy", "folder": ""},
                       format="json")
    assert "copy needs a to_folder" in resp.json()["errors"]["to_folder"][0]


def test_uploads_refuse_empty_and_over_size_files_before_staging(acme, settings):
    client, _ = acme
    settings.SWITCHYARD_MEDIA_MAX_FILE_BYTES = 50_000
    good = SimpleUploadedFile("a.jpg", img.jpeg(64, 64))
    resp = _upload(client, good, SimpleUploadedFile("b.jpg", b""))
    assert resp.status_code == 400
    assert resp.json()["errors"]["files.1"] == ["b.jpg: empty file (0 bytes)"]
    big = SimpleUploadedFile("big.jpg", img.jpeg(800, 800))
    resp = _upload(client, big)
    assert "over the limit of 50000 bytes" in resp.json()["errors"]["files.0"][0]
    resp = _upload(client, SimpleUploadedFile("c.jpg", img.jpeg(64, 64)), folder="../x")
    assert "'..' is refused" in resp.json()["errors"]["folder"][0]
    assert Job.objects.count() == 0 and stored_files("acme") == []


def test_another_tenants_file_is_404(acme):
    client, tenant = acme
    other, _ = client_for("globex")
    put_import("acme", "a.jpg", img.jpeg())
    file = services.file_import(tenant=tenant, source="a.jpg", folder="", operation="op-1")
    assert client.get(f"/api/v1/media/files/{file.id}").status_code == 200
    assert other.get(f"/api/v1/media/files/{file.id}").status_code == 404
    assert other.get(f"/api/v1/media/files/{file.id}/content").status_code == 404
    assert other.get("/api/v1/media/files").json()["results"] == []


# Lanes by cost -------------------------------------------------------------------------------

def test_lane_follows_the_bytes_of_the_job(acme, settings):
    client, tenant = acme
    settings.SWITCHYARD_MEDIA_SLOW_LANE_BYTES = 300_000
    settings.SWITCHYARD_MEDIA_QUICK_CHUNK_BYTES = 350_000
    put_import("acme", "small.jpg", img.jpeg_of_about(100_000))
    put_import("acme", "large.jpg", img.jpeg_of_about(400_000))
    small = services.file_import(tenant=tenant, source="small.jpg", folder="", operation="s")
    large = services.file_import(tenant=tenant, source="large.jpg", folder="", operation="l")

    def lane(task, *items):
        job, _ = job_submit(tenant=tenant, task=task, params={"items": list(items)})
        assert job.routing_key == f"{job.lane}.premium.{task}"
        return job.lane

    assert lane("media.upload", {"source": "small.jpg", "name": "x.jpg"}) == "quick"
    assert lane("media.upload", {"source": "large.jpg", "name": "y.jpg"}) == "slow"
    assert lane("media.thumbnail", {"file": str(small.id)}) == "quick"
    assert lane("media.thumbnail", {"file": str(large.id)}) == "slow"
    # A copy of four small files adds up past the chunk threshold
    assert lane("media.copy", *[{"file": str(small.id), "to_folder": f"c{i}"}
                                for i in range(4)]) == "slow"
    # Metadata work is quick whatever the size
    assert lane("media.trash", {"file": str(large.id)}) == "quick"
    assert lane("media.rename", {"file": str(large.id), "name": "z.jpg"}) == "quick"

    # A batch: each chunk goes where its own files send it
    items = [{"file": str(f.id)} for f in (small, small, large, small)]
    resp = client.post("/api/v1/batches", {"task": "media.thumbnail", "items": items,
                                           "chunk_size": 2}, format="json")
    assert resp.status_code == 202 and resp.json()["lane"] == "mixed"
    chunks = Job.objects.filter(batch_id=resp.json()["id"]).order_by("chunk_index")
    assert [c.lane for c in chunks] == ["quick", "slow"]
    assert [c.routing_key for c in chunks] == ["quick.premium.media.thumbnail",
                                               "slow.premium.media.thumbnail"]


def test_the_catalogue_lists_the_media_tasks_as_batch_tasks(acme):
    client, _ = acme
    tasks = {t["name"]: t for t in client.get("/api/v1/tasks").json()}
    for name in ("upload", "thumbnail", "rename", "copy", "move", "trash", "restore", "delete"):
        assert tasks[f"media.{name}"]["accepts_batches"] is True
    assert "media.purge_trashed" not in tasks


# Services: idempotent when run twice ---------------------------------------------------------

def test_services_run_twice_change_nothing_more(acme, settings):
    _, tenant = acme
    settings.SWITCHYARD_MEDIA_THUMBNAIL_SIZES = [64, 256]
    put_import("acme", "a.jpg", img.jpeg(800, 600))
    first = services.file_import(tenant=tenant, source="a.jpg", folder="in", operation="up")
    again = services.file_import(tenant=tenant, source="a.jpg", folder="in", operation="up")
    assert first.id == again.id and File.objects.count() == 1
    before = stored_files("acme")
    assert len(before) == 3  # original and two thumbnails

    services.file_thumbnail(file=first)
    services.file_thumbnail(file=first)
    assert stored_files("acme") == before

    copy = services.file_copy(file=first, folder="out", operation="copy-1")
    assert services.file_copy(file=first, folder="out", operation="copy-1").id == copy.id
    assert File.objects.count() == 2 and len(stored_files("acme")) == 6

    # A move into a clash, resolved by renaming, run twice: one rename, not two
    moved = services.file_move(file=first, folder="out", on_clash="rename", operation="mv-1")
    assert moved.path == "out/a (2).jpg"
    moved = services.file_move(file=moved, folder="out", on_clash="rename", operation="mv-1")
    assert moved.path == "out/a (2).jpg"

    with pytest.raises(services.Refused, match="already exists"):
        services.file_move(file=moved, folder="out", name="a.jpg", operation="mv-2")

    services.file_trash(file=copy)
    services.file_trash(file=copy)
    services.file_restore(file=copy, operation="r")
    assert File.objects.get(id=copy.id).state == "active"
    services.file_delete(file=copy)
    services.file_delete(file=copy)
    assert File.objects.get(id=copy.id).state == "deleted" and len(stored_files("acme")) == 3


def test_a_staged_token_that_is_a_path_never_leaves_the_staging_folder(acme, tmp_path):
    # Given a file outside the tenant's staging folder, reachable by a relative path
    _, tenant = acme
    secret = storage.media_storage().path("globex/staging/secret-file")
    os.makedirs(os.path.dirname(secret), exist_ok=True)
    Path(secret).write_bytes(img.jpeg(10, 10))
    # When a message (not the API, which refuses it) hands the upload task such a token
    for token in ("../../globex/staging/secret-file", "x" * 32, ""):
        with pytest.raises(services.Refused, match="not a staged upload token"):
            services.file_upload_staged(tenant=tenant, token=token, folder="", name="a.jpg")
    # Then nothing was read or made, and the other tenant's file is still there
    assert File.objects.count() == 0 and Path(secret).exists()
