"""Media tasks: one function per file, each a batch task (``jobs.batch_task``).

Every task takes ``{"items": [...]}``: one item is one file, so a job may
carry one file (``POST /api/v1/jobs``; a failure fails the job) or a batch
chunk of many (``POST /api/v1/batches``, ``POST /api/v1/media/operations``;
each failed file is reported and the chunk goes on).

Lanes by cost (``MediaTask.lane_for``): uploads, thumbnails and copies read
and write image bytes, so a job (or batch chunk) with a file of
``SWITCHYARD_MEDIA_SLOW_LANE_BYTES`` or more, or whose files add up to
``SWITCHYARD_MEDIA_QUICK_CHUNK_BYTES`` or more, runs in ``slow``; small files
in ``quick``. Uploads and thumbnails also decode: one whose image needs more
memory to decode than the quick lane has (``SWITCHYARD_MEDIA_DECODE_BYTES``,
from its header's pixels: a small PNG can hold 88 megapixels) runs in ``slow``,
and a task refuses to decode more than the lane it runs in has. Rename, move,
trash, restore and delete touch one row (and delete a few keys): always ``quick``.

The tenant is the job's (its record exists before the task runs, for the API's
jobs and for Celery-native messages alike); a file of another tenant is
"no such file".
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery import current_task
from django.conf import settings

from jobs.batch_task import batch_task
from jobs.catalogue import InvalidParams
from jobs.models import Job
from jobs.options import fingerprint
from jobs.task import SwitchyardTask
from media import storage
from media.images import header_cost
from media.models import File
from media.paths import PathRefused, clean_folder, clean_name, resolve_source
from media.selectors import file_costs, file_get
from media.services import (
    ON_CLASH,
    Refused,
    file_copy,
    file_delete,
    file_import,
    file_move,
    file_purge_trashed,
    file_rename,
    file_restore,
    file_thumbnail,
    file_trash,
    file_upload_staged,
)
from media.staging import staging_sweep
from routing import topology
from switchyard.celery import app
from tenants.models import Tenant

#: What one file of a job costs: ``(bytes, bytes of memory to decode it)``.
Cost = tuple[int, int]


class MediaTask(SwitchyardTask):
    """A media task whose lane follows what its files cost (``costing``)."""

    #: ``costing(chunks, tenant) -> [[Cost of each file] per chunk]``; None: the
    #: declared lane.
    costing: Callable[[Sequence[Sequence[Any]], Tenant], list[list[Cost]]] | None = None

    def lane_for(self, params: Mapping[str, Any], *, tenant: Any = None) -> str:
        items = params.get("items") if isinstance(params, Mapping) else None
        if not isinstance(items, list) or not items:
            return self.lane
        return self.chunk_lanes([items], tenant=tenant)[0]

    def chunk_lanes(self, chunks: Sequence[Sequence[Any]], *, tenant: Any = None) -> list[str]:
        if self.costing is None or tenant is None:
            return [self.lane] * len(chunks)
        return [lane_for_costs(costs) for costs in self.costing(chunks, tenant)]


def lane_for_costs(costs: Sequence[Cost]) -> str:
    """``slow`` for a large file (``SWITCHYARD_MEDIA_SLOW_LANE_BYTES``), many bytes in
    all (``SWITCHYARD_MEDIA_QUICK_CHUNK_BYTES``) or a file that needs more memory to
    decode than the quick lane has (``SWITCHYARD_MEDIA_DECODE_BYTES``), else ``quick``.
    Files are decoded one at a time: the largest decode counts, not their sum."""
    sizes = [size for size, _ in costs]
    heavy = (max(sizes, default=0) >= settings.SWITCHYARD_MEDIA_SLOW_LANE_BYTES
             or sum(sizes) >= settings.SWITCHYARD_MEDIA_QUICK_CHUNK_BYTES
             or max((decode for _, decode in costs), default=0)
             > settings.SWITCHYARD_MEDIA_DECODE_BYTES[topology.QUICK.name])
    return topology.SLOW.name if heavy else topology.QUICK.name


def _files_weight(chunks: Sequence[Sequence[Any]], tenant: Tenant, *,
                  decodes: bool = True) -> list[list[Cost]]:
    ids = [item.get("file") for chunk in chunks for item in chunk if isinstance(item, dict)]
    found = file_costs(tenant=tenant, file_ids=ids)

    def weight(item: dict) -> Cost:
        size, decode = found.get(str(item.get("file")), (0, 0))
        return (size, decode if decodes else 0)

    return [[weight(item) for item in chunk if isinstance(item, dict)] for chunk in chunks]


def _copy_weight(chunks: Sequence[Sequence[Any]], tenant: Tenant) -> list[list[Cost]]:
    """A copy reads and writes bytes; it decodes nothing."""
    return _files_weight(chunks, tenant, decodes=False)


def _upload_weight(chunks: Sequence[Sequence[Any]], tenant: Tenant) -> list[list[Cost]]:
    def weight(item: Any) -> Cost:
        if not isinstance(item, dict):
            return (0, 0)
        if storage.is_staging_token(item.get("staged")):
            key = storage.staging_key(tenant.name, item["staged"])
            size = storage.size_of(key) or 0
            try:
                with storage.media_storage().open(key, "rb") as fh:
                    return (size, header_cost(fh) or 0)
            except OSError:
                return (size, 0)
        try:
            path = resolve_source(item.get("source"), tenant_name=tenant.name)
            return (path.stat().st_size, header_cost(path) or 0)
        except (PathRefused, OSError):
            return (0, 0)  # refused by check_item, or by the task with its reason

    return [[weight(item) for item in chunk] for chunk in chunks]


# Item schemas and checks ----------------------------------------------------------------

_FILE = {"type": "string", "minLength": 32, "maxLength": 36, "description": "a file id"}
_FOLDER = {"type": "string", "maxLength": 1000,
           "description": "relative folder, '/'-separated; '' is the top folder"}
_NAME = {"type": "string", "minLength": 1, "maxLength": 255}
_ON_CLASH = {"enum": list(ON_CLASH), "description": "when the name is taken: refuse "
             "(default), rename ('a (2).jpg') or replace (the other file goes to the trash)"}


def _schema(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


def _check_path(item: Mapping, key: str, cleaner) -> None:
    if key in item:
        try:
            cleaner(item[key], field=key)
        except PathRefused as exc:
            raise InvalidParams(exc.message, exc.field) from None


def _check_file(item: Mapping) -> None:
    try:
        uuid.UUID(str(item.get("file")))
    except ValueError:
        raise InvalidParams(f"{item.get('file')!r} is not a file id", "file") from None


def check_file_item(item: Mapping, *, tenant: Any = None) -> None:
    """A file operation's item: a file id, a confined folder and name."""
    _check_file(item)
    _check_path(item, "to_folder", clean_folder)
    _check_path(item, "name", clean_name)


def check_upload_item(item: Mapping, *, tenant: Any = None) -> None:
    """An upload: exactly one of ``source`` (inside the tenant's import folder,
    symbolic links resolved) or ``staged``; a confined folder and name."""
    if ("source" in item) == ("staged" in item):
        raise InvalidParams("give either source (a path in your import folder) or staged "
                            "(a token from POST /api/v1/media/uploads)", "source")
    if "staged" in item and not storage.is_staging_token(item["staged"]):
        raise InvalidParams("not a staged upload token", "staged")
    _check_path(item, "folder", clean_folder)
    _check_path(item, "name", clean_name)
    if "source" in item:
        try:
            if tenant is not None:
                resolve_source(item["source"], tenant_name=tenant.name)
            else:
                clean_folder(item["source"], field="source")
        except PathRefused as exc:
            raise InvalidParams(exc.message, exc.field) from None


# Per-job context --------------------------------------------------------------------------

_context: dict[str, Any] = {}


def _job() -> tuple[Tenant, str, str]:
    """``(tenant, job id, task name)`` of the running job (read once per job)."""
    request = current_task.request
    if _context.get("job") != request.id:
        tenant = Tenant.objects.filter(jobs__id=request.id).first()
        if tenant is None:
            raise Refused("media tasks run for a tenant; this job has none")
        _context.update(job=request.id, tenant=tenant)
    return _context["tenant"], request.id, current_task.name


def _running_lane() -> str | None:
    """The lane whose queue the running job came from (None outside a worker)."""
    request = current_task.request
    routing_key = (getattr(request, "delivery_info", None) or {}).get("routing_key") or ""
    lane_name = routing_key.split(".", 1)[0]
    if lane_name in topology.LANES_BY_NAME:
        return lane_name
    return Job.objects.filter(id=request.id).values_list("lane", flat=True).first()


def _file(item: Mapping, tenant: Tenant) -> File:
    file = file_get(tenant=tenant, file_id=item.get("file"))
    if file is None:
        raise Refused(f"no file {item.get('file')}")
    return file


def _op(item: Mapping) -> tuple[Tenant, str]:
    tenant, job_id, name = _job()
    return tenant, fingerprint(job_id, name, dict(item))


def _summary(file: File) -> dict:
    return {"file": str(file.id), "path": file.path, "state": file.state}


_OPTS = {"keep_results": True, "single_item_raises": True}


# Tasks ----------------------------------------------------------------------------------

@batch_task(
    name="media.upload", lane="slow", base=MediaTask, costing=staticmethod(_upload_weight),
    check_item=check_upload_item, **_OPTS,
    item_schema=_schema({
        "source": {"type": "string", "maxLength": 2000,
                   "description": "a path inside your import folder"},
        "staged": {"type": "string", "description": "token of a file sent to "
                   "POST /api/v1/media/uploads"},
        "folder": _FOLDER, "name": _NAME, "on_clash": _ON_CLASH,
        "thumbnails": {"type": "boolean", "description": "make thumbnails too (default true)"},
    }, []),
)
def upload(item: dict) -> dict:
    """Store an image (checked by content: JPEG, PNG or WebP) and make its thumbnails."""
    tenant, operation = _op(item)
    options = {"folder": item.get("folder", ""), "on_clash": item.get("on_clash", "refuse"),
               "thumbnails": item.get("thumbnails", True)}
    if "staged" in item:
        file = file_upload_staged(tenant=tenant, token=item["staged"],
                                  name=item.get("name", ""), lane_name=_running_lane(),
                                  **options)
    else:
        file = file_import(tenant=tenant, source=item.get("source"), name=item.get("name"),
                           operation=operation, lane_name=_running_lane(), **options)
    return {**_summary(file), "size": file.size, "content_type": file.content_type}


@batch_task(
    name="media.thumbnail", lane="slow", base=MediaTask, costing=staticmethod(_files_weight),
    check_item=check_file_item, **_OPTS,
    item_schema=_schema({"file": _FILE, "format": {"enum": ["JPEG", "PNG", "WEBP"]}},
                        ["file"]),
)
def make_thumbnails(item: dict) -> dict:
    """(Re)make a file's thumbnails in every configured size (EXIF orientation applied)."""
    tenant, _ = _op(item)
    file = file_thumbnail(file=_file(item, tenant), image_format=item.get("format"),
                          lane_name=_running_lane())
    return {**_summary(file), "thumbnails": sorted(file.thumbnails, key=int)}


@batch_task(
    name="media.rename", lane="quick", check_item=check_file_item, **_OPTS,
    item_schema=_schema({"file": _FILE, "name": _NAME, "on_clash": _ON_CLASH},
                        ["file", "name"]),
)
def rename(item: dict) -> dict:
    """Rename a file in its folder."""
    tenant, operation = _op(item)
    return _summary(file_rename(file=_file(item, tenant), name=item["name"],
                                on_clash=item.get("on_clash", "refuse"), operation=operation))


@batch_task(
    name="media.move", lane="quick", check_item=check_file_item, **_OPTS,
    item_schema=_schema({"file": _FILE, "to_folder": _FOLDER, "name": _NAME,
                         "on_clash": _ON_CLASH}, ["file", "to_folder"]),
)
def move(item: dict) -> dict:
    """Move a file to another folder (optionally under a new name)."""
    tenant, operation = _op(item)
    return _summary(file_move(file=_file(item, tenant), folder=item["to_folder"],
                              name=item.get("name"), on_clash=item.get("on_clash", "refuse"),
                              operation=operation))


@batch_task(
    name="media.copy", lane="slow", base=MediaTask, costing=staticmethod(_copy_weight),
    check_item=check_file_item, **_OPTS,
    item_schema=_schema({"file": _FILE, "to_folder": _FOLDER, "name": _NAME,
                         "on_clash": _ON_CLASH}, ["file", "to_folder"]),
)
def copy(item: dict) -> dict:
    """Copy a file, with its thumbnails, to a folder (optionally under a new name)."""
    tenant, operation = _op(item)
    made = file_copy(file=_file(item, tenant), folder=item["to_folder"], name=item.get("name"),
                     on_clash=item.get("on_clash", "refuse"), operation=operation)
    return {**_summary(made), "source": item["file"]}


@batch_task(name="media.trash", lane="quick", check_item=check_file_item, **_OPTS,
            item_schema=_schema({"file": _FILE}, ["file"]))
def trash(item: dict) -> dict:
    """Move a file to the trash: restorable until the purge deletes it."""
    tenant, _ = _op(item)
    return _summary(file_trash(file=_file(item, tenant)))


@batch_task(name="media.restore", lane="quick", check_item=check_file_item, **_OPTS,
            item_schema=_schema({"file": _FILE, "on_clash": _ON_CLASH}, ["file"]))
def restore(item: dict) -> dict:
    """Bring a trashed file back to its folder and name."""
    tenant, operation = _op(item)
    return _summary(file_restore(file=_file(item, tenant),
                                 on_clash=item.get("on_clash", "refuse"), operation=operation))


@batch_task(name="media.delete", lane="quick", check_item=check_file_item, **_OPTS,
            item_schema=_schema({"file": _FILE}, ["file"]))
def delete(item: dict) -> dict:
    """Delete a file for good: its original and thumbnails leave the storage."""
    tenant, _ = _op(item)
    return _summary(file_delete(file=_file(item, tenant)))


@app.task(name="media.sweep_staging", lane="slow", public=False)
def sweep_staging() -> dict:
    """Delete staged uploads no job will read (beat; ``media.staging``)."""
    age = dt.timedelta(seconds=settings.SWITCHYARD_MEDIA_STAGING_GRACE)
    return {"removed": staging_sweep(older_than=age)}


@app.task(name="media.purge_trashed", lane="slow", public=False)
def purge_trashed() -> dict:
    """Delete files trashed longer than SWITCHYARD_MEDIA_TRASH_RETENTION_DAYS (beat)."""
    age = dt.timedelta(days=settings.SWITCHYARD_MEDIA_TRASH_RETENTION_DAYS)
    return {"purged": file_purge_trashed(older_than=age)}
