"""Reads on media files. A tenant only ever sees its own files."""
from __future__ import annotations

import uuid

from django.db.models import Q, QuerySet

from media.models import File
from tenants.models import Tenant


def file_get(*, tenant: Tenant, file_id) -> File | None:
    """The tenant's file, or None (another tenant's file is as good as missing)."""
    try:
        file_id = uuid.UUID(str(file_id))
    except ValueError:
        return None
    return File.objects.select_related("tenant").filter(tenant=tenant, id=file_id).first()


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


def file_sizes(*, tenant: Tenant, file_ids) -> dict[str, int]:
    """``{file id: bytes}`` of the tenant's files among ``file_ids`` (unknown ids left out)."""
    ids = []
    for value in file_ids:
        try:
            ids.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    sizes: dict[str, int] = {}
    for start in range(0, len(ids), 10_000):  # bounded query parameters
        rows = File.objects.filter(tenant=tenant, id__in=ids[start:start + 10_000])
        sizes.update((str(pk), size) for pk, size in rows.values_list("id", "size"))
    return sizes
