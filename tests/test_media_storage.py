"""A tenant's storage: a quota on the bytes it keeps, and staged uploads that never leak.

Uploads are staged on the shared volume before their job runs; a job that never
runs (cancelled, expired, dead) must not leave its bytes there for ever, and a
tenant must not be able to fill the volume by uploading and cancelling in a loop.
"""
from __future__ import annotations

import datetime as dt

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.models import Job
from jobs.submission import job_cancel
from media.models import File
from media.selectors import storage_used
from media.staging import staging_sweep
from tenants.models import Tenant
from tests import media_support as img
from tests.media_support import stored_files
from tests.test_api import client_for

pytestmark = pytest.mark.django_db

PICTURE = img.jpeg(64, 64)


media_dirs = img.media_dirs  # the fixture


@pytest.fixture
def acme(media_dirs):
    client, tenant = client_for("acme", "premium")
    return client, tenant


def _upload(client, count: int = 1):
    files = [SimpleUploadedFile(f"p{i}.jpg", PICTURE) for i in range(count)]
    return client.post("/api/v1/media/uploads", {"files": files}, format="multipart")


def _quota(tenant: Tenant, files: int) -> None:
    Tenant.objects.filter(id=tenant.id).update(max_storage_bytes=files * len(PICTURE))


def test_an_upload_past_the_storage_quota_is_413_and_stages_nothing(acme):
    client, tenant = acme
    _quota(tenant, 2)
    assert _upload(client, 2).status_code == 202
    # Two uploads are waiting for their jobs: their staged bytes count
    assert storage_used(tenant=tenant) == 2 * len(PICTURE)
    refused = _upload(client, 1)
    assert refused.status_code == 413
    detail = refused.json()["detail"]
    assert "storage quota exceeded" in detail and f"quota is {2 * len(PICTURE)}" in detail
    assert "Retry-After" not in refused
    # Nothing of the refused request was written or recorded
    assert len(stored_files("acme")) == 2 and Job.objects.count() == 2


def test_upload_cancel_repeat_cannot_fill_the_volume_and_the_sweep_frees_it(acme):
    client, tenant = acme
    _quota(tenant, 3)
    # Given a tenant that uploads and cancels in a loop
    for _ in range(3):
        answer = _upload(client, 1)
        assert answer.status_code == 202
        job_cancel(job=Job.objects.get(id=answer.json()[0]["job"]["id"]))
    # Then the cancelled uploads' bytes still count: the next upload is refused
    assert _upload(client, 1).status_code == 413
    assert len(stored_files("acme")) == 3
    # And beat's sweep deletes the bytes no unfinished job will read
    assert staging_sweep(older_than=dt.timedelta(0)) == 3
    assert stored_files("acme") == [] and storage_used(tenant=tenant) == 0
    assert _upload(client, 1).status_code == 202


def test_the_sweep_keeps_what_a_waiting_upload_will_read_and_what_is_being_staged(acme):
    client, tenant = acme
    waiting = _upload(client, 2)
    assert waiting.status_code == 202
    cancelled = _upload(client, 1).json()[0]["job"]["id"]
    job_cancel(job=Job.objects.get(id=cancelled))
    # A recent stage is spared whatever its job: the web may not have committed it yet
    assert staging_sweep(older_than=dt.timedelta(minutes=10)) == 0
    # Past the grace, only the cancelled upload's bytes go
    assert staging_sweep(older_than=dt.timedelta(0)) == 1
    assert len(stored_files("acme")) == 2
    assert Job.objects.filter(status=Job.Status.QUEUED).count() == 2


def test_a_copy_past_the_storage_quota_is_413(acme):
    client, tenant = acme
    kept = [File.objects.create(tenant=tenant, folder="", name=f"f{i}.jpg", size=1000,
                                content_type="image/jpeg", width=64, height=64,
                                storage_key=f"acme/x/{i}", checksum="0" * 64)
            for i in range(3)]
    Tenant.objects.filter(id=tenant.id).update(max_storage_bytes=5000)
    body = {"operation": "copy", "files": [str(f.id) for f in kept], "to_folder": "copies"}
    refused = client.post("/api/v1/media/operations", body, format="json")
    assert refused.status_code == 413, refused.content
    assert "copies of 3 file(s) add 3000 bytes to the 3000 kept" in refused.json()["detail"]
    Tenant.objects.filter(id=tenant.id).update(max_storage_bytes=6000)
    assert client.post("/api/v1/media/operations", body, format="json").status_code == 202
