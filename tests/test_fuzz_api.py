"""Schemathesis against the API's own OpenAPI schema: no 5xx, no answer the schema does not allow.

The requests go in-process to the WSGI application (no server). Every request runs
inside the test's database transaction, which is rolled back, so jobs submitted one
by one are never published; a bulk submission publishes at once, into this run's
vhost, whose lanes are purged afterwards. The tenant's token rides in the headers of every call;
schemathesis also drops it, and sends every method the schema does not declare.
The tenant owns a job, a batch and a file, and half of the generated ids are
replaced by those, so the fuzzer reads and cancels real records, not only 404s;
the schema's request examples make it submit jobs, bulks and batches that succeed.
Bounded: a few dozen examples per operation and a fixed seed (about 30 s).
"""
from __future__ import annotations

import uuid
import zlib

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jobs.batches import batch_submit
from jobs.submission import job_submit
from media import storage
from media.models import File
from switchyard.wsgi import application
from tenants.services import tenant_create
from tests.media_support import jpeg, media_dirs

schema = schemathesis.openapi.from_wsgi("/api/schema/", application)

__all__ = ["media_dirs"]  # the fixture

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


pytestmark = pytest.mark.rabbitmq  # bulk submissions publish at once (the run's own vhost)


@pytest.fixture
def fuzz_tenant(db, media_dirs, lanes_empty):
    """The tenant's token, and the ids of the records it owns, by path parameter."""
    # Django's own test client does the same: a request must not close the connection
    # that holds the test's transaction.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        tenant, key = tenant_create(name="fuzz", tier="premium")
        job, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": 1})
        batch, _ = batch_submit(tenant=tenant, task="demo.checksum",
                                items=[{"data": "a"}, {"data": "b"}], chunk_size=1)
        file_id = uuid.uuid4()
        data = jpeg(32, 24)
        key_of_original = storage.original_key(tenant.name, file_id, "JPEG")
        storage.write_bytes(key_of_original, data)
        File.objects.create(id=file_id, tenant=tenant, name="seed.jpg", size=len(data),
                            content_type="image/jpeg", width=32, height=24, checksum="0" * 64,
                            storage_key=key_of_original, thumbnails={})
        yield key, {"job_id": str(job.id), "batch_id": str(batch.id), "file_id": str(file_id)}
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_answers_within_its_schema_and_never_5xx(case, fuzz_tenant):
    token, owned = fuzz_tenant
    for name, value in (case.path_parameters or {}).items():
        # Deterministic: the generated value decides whether it is swapped for a real id.
        if name in owned and zlib.crc32(str(value).encode()) % 2 == 0:
            case.path_parameters[name] = owned[name]
    case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=CHECKS)
