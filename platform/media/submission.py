"""Submitting media work: uploads (one ``media.upload`` job per file) and an operation on
a set of files or a whole folder (one batch, ``jobs.batches``).

Run by the web (``media.api``). The files' bytes are staged here, before their
jobs are accepted, and removed again if the jobs are refused; the workers do
the rest (``media.services``, through ``media.tasks``). Refusals are
``InvalidSubmission`` naming the field (``PathRefused`` is one), or whatever
``job_submit`` / ``batch_submit`` raise.
"""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Sum

from jobs.batches import batch_submit, max_items
from jobs.errors import InvalidSubmission, StorageQuotaExceeded
from jobs.models import Batch, Job
from jobs.options import SubmitOptions
from jobs.quotas import check_quotas
from jobs.submission import job_submit
from media import storage
from media.models import File
from media.paths import clean_folder, clean_name
from media.selectors import file_list, storage_used
from switchyard.clock import platform_now
from tenants.models import Tenant

#: Operations on a set of files: the task each runs and the states a folder gives.
OPERATIONS = {
    "thumbnail": ("media.thumbnail", (File.State.ACTIVE,)),
    "copy": ("media.copy", (File.State.ACTIVE,)),
    "move": ("media.move", (File.State.ACTIVE,)),
    "trash": ("media.trash", (File.State.ACTIVE,)),
    "restore": ("media.restore", (File.State.TRASHED,)),
    "delete": ("media.delete", (File.State.ACTIVE, File.State.TRASHED)),
}
#: Which operations take which of the optional fields.
TAKES = {
    "to_folder": {"copy", "move"},
    "on_clash": {"copy", "move", "restore"},
    "format": {"thumbnail"},
}
_NEEDS_FOLDER = TAKES["to_folder"]


def check_storage(*, tenant: Tenant, adding: int, what: str) -> None:
    """``StorageQuotaExceeded`` unless ``adding`` more bytes fit the tenant's storage quota."""
    used = storage_used(tenant=tenant)
    if used + adding > tenant.max_storage_bytes:
        raise StorageQuotaExceeded(
            f"{what} add {adding} bytes to the {used} kept (files, trash and uploads waiting "
            f"for their job); the quota is {tenant.max_storage_bytes} bytes. Delete files or "
            "empty the trash")


def upload_stage(*, tenant: Tenant, uploaded: UploadedFile) -> str:
    """Keep a file received by the web for ``media.upload``; returns its token."""
    token = uuid.uuid4().hex
    storage.write_bytes(storage.staging_key(tenant.name, token), uploaded)
    return token


def upload_discard(*, tenant: Tenant, token: str) -> None:
    storage.delete_key(storage.staging_key(tenant.name, token))


@dataclass(frozen=True)
class UploadAccepted:
    """One uploaded file and the job that will turn it into a file."""

    name: str
    size: int
    job: Job


def upload_submit(*, tenant: Tenant, files: Sequence[UploadedFile], folder: str,
                  on_clash: str, thumbnails: bool) -> list[UploadAccepted]:
    """Stage every file, then accept one ``media.upload`` job per file, all or none.

    Each file is checked first (a name that stays in ``folder``, not empty, within
    ``SWITCHYARD_MEDIA_MAX_FILE_BYTES``: ``InvalidSubmission`` naming
    ``files.<i>``); the bytes are staged; the jobs are accepted in one transaction.
    If that is refused (a quota), every staged file is removed again.
    """
    folder = clean_folder(folder, field="folder")
    limit = settings.SWITCHYARD_MEDIA_MAX_FILE_BYTES
    named = []
    for index, uploaded in enumerate(files):
        field = f"files.{index}"
        name = clean_name(uploaded.name, field=field)
        if uploaded.size == 0:
            raise InvalidSubmission(field, f"{name}: empty file (0 bytes)")
        if uploaded.size > limit:
            raise InvalidSubmission(field, f"{name}: {uploaded.size} bytes is over the limit "
                                           f"of {limit} bytes")
        named.append((uploaded, name))
    # Both quotas before a byte is staged: a refused upload leaves nothing behind.
    check_quotas(tenant, platform_now(), adding=len(named), submissions=len(named))
    check_storage(tenant=tenant, adding=sum(uploaded.size for uploaded, _ in named),
                  what=f"these {len(named)} file(s)")
    staged: list[str] = []
    try:
        for uploaded, _ in named:
            staged.append(upload_stage(tenant=tenant, uploaded=uploaded))
        answers = []
        with transaction.atomic():
            for (uploaded, name), token in zip(named, staged, strict=True):
                item = {"staged": token, "folder": folder, "name": name,
                        "on_clash": on_clash, "thumbnails": thumbnails}
                job, _ = job_submit(tenant=tenant, task="media.upload",
                                    params={"items": [item]})
                answers.append(UploadAccepted(name=name, size=uploaded.size, job=job))
    except Exception:
        for token in staged:
            upload_discard(tenant=tenant, token=token)
        raise
    return answers


def operation_submit(*, tenant: Tenant, operation: str, files: Sequence[uuid.UUID] | None = None,
                     folder: str | None = None, recursive: bool = False,
                     to_folder: str | None = None, on_clash: str | None = None,
                     format: str | None = None, chunk_size: int | None = None,
                     options: SubmitOptions | None = None,
                     idempotency_key: str = "") -> tuple[Batch, bool]:
    """Run ``operation`` (a key of ``OPERATIONS``) on ``files`` (ids) or on every file
    of ``folder`` (and below it, ``recursive``) in the state the operation takes,
    as one batch of its task; returns ``(batch, created)`` like ``batch_submit``."""
    task, states = OPERATIONS[operation]
    if (files is None) == (folder is None):
        raise InvalidSubmission("files", "give either files (ids) or folder")
    if operation in _NEEDS_FOLDER and to_folder is None:
        raise InvalidSubmission("to_folder", f"{operation} needs a to_folder")
    given = {"to_folder": to_folder, "on_clash": on_clash, "format": format}
    for field, value in given.items():
        if value is not None and operation not in TAKES[field]:
            raise InvalidSubmission(field, f"not taken by {operation}")
    extra = {key: given[key] for key in ("on_clash", "format") if given[key] is not None}
    if to_folder is not None:
        extra["to_folder"] = clean_folder(to_folder, field="to_folder")
    if files is not None:
        ids = [str(file_id) for file_id in files]
    else:
        folder = clean_folder(folder, field="folder")
        ids = [str(pk) for pk in file_list(tenant=tenant, folder=folder, recursive=recursive,
                                           states=states)
               .order_by("folder", "name").values_list("id", flat=True)[:max_items() + 1]]
        if not ids:
            raise InvalidSubmission("folder", f"no {'/'.join(states)} files in "
                                              f"{folder or 'the top folder'!r}")
    if len(ids) > max_items():
        raise InvalidSubmission("files", f"at most {max_items()} files in one operation")
    if operation == "copy":  # each copy is a new file's bytes
        adding = 0
        for start in range(0, len(ids), 5000):  # bounded query parameters
            adding += file_list(tenant=tenant, states=states).filter(
                id__in=ids[start:start + 5000]).aggregate(n=Sum("size"))["n"] or 0
        check_storage(tenant=tenant, adding=adding, what=f"copies of {len(ids)} file(s)")
    return batch_submit(tenant=tenant, task=task, items=[{"file": i, **extra} for i in ids],
                        chunk_size=chunk_size, options=options, idempotency_key=idempotency_key)
