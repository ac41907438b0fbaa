"""Reads on media files. A tenant only ever sees its own files."""
from __future__ import annotations

import uuid

from django.db.models import Q, QuerySet, Sum

from media import storage
from media.images import CONTENT_TYPES, decode_cost
from media.models import File
from tenants.models import Tenant

#: Image format of each content type.
FORMATS = {content_type: fmt for fmt, content_type in CONTENT_TYPES.items()}


def file_get(*, tenant: Tenant, file_id) -> File | None:
    """The tenant's file, or None (another tenant's file is as good as missing)."""
    try:
        file_id = uuid.UUID(str(file_id))
    except ValueError:
        return None
    return File.objects.select_related("tenant").filter(tenant=tenant, id=file_id).first()


def storage_used(*, tenant: Tenant) -> int:
    """Bytes the tenant keeps: its files' originals (active and trashed) and the uploads
    staged for jobs that have not run yet (thumbnails are not counted)."""
    files = File.objects.filter(tenant=tenant, state__in=(File.State.ACTIVE, File.State.TRASHED)
                                ).aggregate(n=Sum("size"))["n"] or 0
    return files + sum(storage.size_of(storage.staging_key(tenant.name, token)) or 0
                       for token in storage.staged_tokens(tenant.name))


def file_list(*, tenant: Tenant, folder: str | None = None, recursive: bool = False,
              states: tuple[str, ...] = (File.State.ACTIVE,)) -> QuerySet[File]:
    """The tenant's files in ``states``; in ``folder`` (and below it, ``recursive``)."""
    files = File.objects.filter(tenant=tenant, state__in=states)
    if folder is not None:
        if recursive and folder:
            files = files.filter(Q(folder=folder) | Q(folder__startswith=f"{folder}/"))
        elif not recursive:
            files = files.filter(folder=folder)
    return files


def file_costs(*, tenant: Tenant, file_ids) -> dict[str, tuple[int, int]]:
    """``{file id: (bytes, bytes of memory to decode it)}`` of the tenant's files among
    ``file_ids`` (unknown ids left out); the decode cost from the recorded width and
    height (``media.images.decode_cost``), without reading a byte of the file."""
    ids = []
    for value in file_ids:
        try:
            ids.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    costs: dict[str, tuple[int, int]] = {}
    for start in range(0, len(ids), 10_000):  # bounded query parameters
        rows = File.objects.filter(tenant=tenant, id__in=ids[start:start + 10_000])
        for pk, size, width, height, content_type in rows.values_list(
                "id", "size", "width", "height", "content_type"):
            image_format = FORMATS.get(content_type)
            costs[str(pk)] = (size, decode_cost(image_format, (width or 0) * (height or 0)))
    return costs
