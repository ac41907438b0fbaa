"""Writes on media files: upload and import, thumbnails, rename, copy, move, trash,
restore, permanent delete and the purge of old trash.

Run by the workers (``media.tasks``), one file per call. What the web does for
media (staging uploads, submitting operations) is ``media.submission``.

Every service is idempotent, because a task may run twice (a redelivery after
its worker died, acks being late):

* a file an upload or a copy creates gets an id derived from what created it
  (the staged upload, or the job and its item), and its bytes go to keys derived
  from that id: a rerun finds the row, or rewrites the same keys, never a second
  file;
* its row is written last, after every byte is in storage, so a row always has
  its original and thumbnails;
* rename, move and restore record the key of the operation applied
  (``File.last_operation``): a rerun is a no-op rather than a second rename to
  ``name (3).jpg``;
* trash, restore and delete of a file already in the target state do nothing;
  delete marks the row first, then removes bytes (missing bytes are fine), so a
  rerun finishes what a crash interrupted.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from jobs.errors import PermanentFailure
from media import storage
from media.images import ImageRefused, decode, shown_size, thumbnail
from media.models import File
from media.paths import PathRefused, clean_folder, clean_name, resolve_source
from tenants.models import Tenant

#: Namespace of the ids of files created by uploads and copies (uuid5).
FILE_ID_NAMESPACE = uuid.UUID("5b0f6c1e-8d55-4c1a-9f5e-2f7d3f0c9a41")
#: What to do when the target name is taken by an active file.
ON_CLASH = ("refuse", "rename", "replace")
_PLACE_ATTEMPTS = 5


class Refused(PermanentFailure):
    """A media operation no retry can fix (not an image, a clash refused, a file
    gone); the message says why. The job or the batch item fails at once."""


def derived_id(tenant: Tenant, origin: str) -> uuid.UUID:
    return uuid.uuid5(FILE_ID_NAMESPACE, f"{tenant.id}:{origin}")


def _max_bytes() -> int:
    return settings.SWITCHYARD_MEDIA_MAX_FILE_BYTES


def _decode(data: bytes, *, thumbnails: bool, lane_name: str | None) -> Any:
    edges = settings.SWITCHYARD_MEDIA_THUMBNAIL_SIZES
    budgets = settings.SWITCHYARD_MEDIA_DECODE_BYTES
    try:  # out of a lane (a shell, a test), the largest budget; no thumbnails: JPEG at 1/8
        return decode(data, max_bytes=_max_bytes(), max_pixels=settings.SWITCHYARD_MEDIA_MAX_PIXELS,
                      draft_edge=max(edges) if thumbnails and edges else 1,
                      max_cost=budgets.get(lane_name, max(budgets.values())),
                      where=f"the {lane_name} lane" if lane_name in budgets else "")
    except ImageRefused as exc:
        raise Refused(str(exc)) from None


def _clean(value: Any, cleaner, field: str) -> str:
    try:
        return cleaner(value, field=field)
    except PathRefused as exc:
        raise Refused(str(exc)) from None


# Places -------------------------------------------------------------------------------------

def _free_name(file: File, folder: str, name: str) -> str:
    stem, ext = os.path.splitext(name)
    taken = set(File.objects.filter(tenant_id=file.tenant_id, folder=folder,
                                    state=File.State.ACTIVE, name__startswith=stem)
                .exclude(id=file.id).values_list("name", flat=True))
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem} ({n}){ext}"
    return candidate


def _place(file: File, *, folder: str, name: str, on_clash: str, operation: str = "",
           creating: bool = False) -> File:
    """Save ``file`` active at ``folder``/``name``; a clash with another active file
    is refused (``Refused``), resolved with a free name (``rename``: ``a (2).jpg``)
    or by trashing the other file (``replace``, restorable)."""
    if on_clash not in ON_CLASH:
        raise Refused(f"on_clash must be one of {', '.join(ON_CLASH)}, got {on_clash!r}")
    for attempt in range(_PLACE_ATTEMPTS):
        try:
            with transaction.atomic():
                other = (File.objects.select_for_update()
                         .filter(tenant_id=file.tenant_id, folder=folder, name=name,
                                 state=File.State.ACTIVE).exclude(id=file.id).first())
                target = name
                if other is not None:
                    if on_clash == "refuse":
                        raise Refused(f"{other.path!r} already exists (file {other.id}); ask "
                                      "on_clash 'rename' or 'replace'")
                    if on_clash == "replace":
                        _set_trashed(other)
                    else:
                        target = _free_name(file, folder, name)
                file.folder, file.name = folder, target
                file.state, file.trashed_at = File.State.ACTIVE, None
                file.last_operation = operation
                file.save(force_insert=creating)
                return file
        except IntegrityError:
            if creating and File.objects.filter(id=file.id).exists():
                # Another delivery of the same upload or copy got there first.
                return File.objects.get(id=file.id)
            if attempt == _PLACE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _locked(file: File) -> File:
    return File.objects.select_for_update().get(id=file.id)


def _set_trashed(file: File) -> None:
    now = timezone.now()
    File.objects.filter(id=file.id).update(state=File.State.TRASHED, trashed_at=now, updated_at=now)


# Bytes --------------------------------------------------------------------------------------

def _write_thumbnails(file_id: uuid.UUID, tenant_name: str, decoded, image_format: str, *,
                      original: tuple[str, int]) -> dict:
    """Thumbnails of ``decoded`` in every configured size. A size the original already
    fits, in the original's format and upright, IS the original: its entry points at
    the original's key (``original``: key and bytes) instead of a re-encoded copy."""
    made = {}
    image = decoded.image
    # Largest first, each scaled in place from the one before (no full-size copy, and
    # a 128 px thumbnail is drawn from the 512 px one, not from 20 megapixels again).
    for edge in sorted(settings.SWITCHYARD_MEDIA_THUMBNAIL_SIZES, reverse=True):
        if (max(decoded.width, decoded.height) <= edge and image_format == decoded.format
                and decoded.upright):
            key, size = original
            made[str(edge)] = {"key": key, "width": decoded.width, "height": decoded.height,
                               "format": image_format, "bytes": size}
            continue
        data, image = thumbnail(image, edge=edge, image_format=image_format,
                                orientation=decoded.orientation, in_place=True)
        key = storage.thumbnail_key(tenant_name, file_id, edge, image_format)
        storage.write_bytes(key, data)
        width, height = shown_size(image.size, decoded.orientation)
        made[str(edge)] = {"key": key, "width": width, "height": height,
                           "format": image_format, "bytes": len(data)}
    return dict(sorted(made.items(), key=lambda item: int(item[0])))


def _remove_bytes(keys: Iterable[str], file_dir: str) -> None:
    for key in keys:
        storage.delete_key(key)
    storage.prune_empty_dir(file_dir)


def _keys_of(file: File) -> list[str]:
    return [file.storage_key, *(t["key"] for t in (file.thumbnails or {}).values())]


def _read_original(file: File) -> bytes:
    try:
        return storage.read_bytes(file.storage_key, limit=max(file.size, _max_bytes()))
    except FileNotFoundError:
        raise Refused(f"the stored original of file {file.id} is missing") from None


# Upload -------------------------------------------------------------------------------------

def _ingest(*, tenant: Tenant, file_id: uuid.UUID, data: bytes, folder: str, name: str,
            on_clash: str, thumbnails: bool, lane_name: str | None) -> File:
    decoded = _decode(data, thumbnails=thumbnails, lane_name=lane_name)
    key = storage.original_key(tenant.name, file_id, decoded.format)
    storage.write_bytes(key, data)
    thumbs = (_write_thumbnails(file_id, tenant.name, decoded, decoded.format,
                                original=(key, len(data))) if thumbnails else {})
    file = File(id=file_id, tenant=tenant, size=len(data), content_type=decoded.content_type,
                width=decoded.width, height=decoded.height,
                checksum=hashlib.sha256(data).hexdigest(), storage_key=key, thumbnails=thumbs)
    try:
        return _place(file, folder=folder, name=name, on_clash=on_clash, creating=True)
    except Refused:
        _remove_bytes([key, *(t["key"] for t in thumbs.values())],
                      storage.file_dir(tenant.name, file_id))
        raise


def file_upload_staged(*, tenant: Tenant, token: str, folder: str, name: str,
                       on_clash: str = "refuse", thumbnails: bool = True,
                       lane_name: str | None = None) -> File:
    """Turn a staged upload into a file (validated by content, thumbnails made).
    The staged bytes are removed once the file exists or was refused."""
    folder = _clean(folder, clean_folder, "folder")
    name = _clean(name, clean_name, "name")
    file_id = derived_id(tenant, f"staged:{token}")
    try:
        key = storage.staging_key(tenant.name, token)
    except storage.StorageEscape as exc:
        raise Refused(str(exc)) from None
    existing = File.objects.filter(id=file_id).first()
    if existing is None:
        try:
            data = storage.read_bytes(key, limit=_max_bytes())
        except FileNotFoundError:
            raise Refused("the uploaded file is no longer staged (refused or expired)") from None
        try:
            existing = _ingest(tenant=tenant, file_id=file_id, data=data, folder=folder, name=name,
                               on_clash=on_clash, thumbnails=thumbnails, lane_name=lane_name)
        except Refused:
            storage.delete_key(key)
            raise
    storage.delete_key(key)
    return existing


def file_import(*, tenant: Tenant, source: str, folder: str, name: str | None = None,
                on_clash: str = "refuse", thumbnails: bool = True, operation: str,
                lane_name: str | None = None) -> File:
    """Import a file from the tenant's import folder (``source`` relative to it).
    ``operation`` identifies the request (job and item): a rerun returns the same file."""
    folder = _clean(folder, clean_folder, "folder")
    try:
        path = resolve_source(source, tenant_name=tenant.name)
    except PathRefused as exc:
        raise Refused(str(exc)) from None
    name = _clean(name if name is not None else path.name, clean_name, "name")
    file_id = derived_id(tenant, f"import:{operation}")
    existing = File.objects.filter(id=file_id).first()
    if existing is not None:
        return existing
    if path.stat().st_size > _max_bytes():
        raise Refused(f"file is over the limit of {_max_bytes()} bytes")
    with open(path, "rb") as fh:
        data = fh.read(_max_bytes() + 1)
    return _ingest(tenant=tenant, file_id=file_id, data=data, folder=folder, name=name,
                   on_clash=on_clash, thumbnails=thumbnails, lane_name=lane_name)


# Thumbnails ---------------------------------------------------------------------------------

def file_thumbnail(*, file: File, image_format: str | None = None,
                   lane_name: str | None = None) -> File:
    """(Re)make the file's thumbnails in every configured size, as ``image_format``
    (JPEG, PNG or WEBP; the original's by default), within the decode budget of
    ``lane_name``. Same keys on a rerun; sizes or formats no longer wanted are removed."""
    if file.state != File.State.ACTIVE:
        raise Refused(f"file {file.id} is {file.state}; only active files get thumbnails")
    decoded = _decode(_read_original(file), thumbnails=True, lane_name=lane_name)
    image_format = (image_format or decoded.format).upper()
    if image_format not in storage.EXTENSIONS:
        raise Refused(f"format must be JPEG, PNG or WEBP, got {image_format!r}")
    made = _write_thumbnails(file.id, file.tenant.name, decoded, image_format,
                             original=(file.storage_key, file.size))
    keep = {t["key"] for t in made.values()} | {file.storage_key}
    stale = [t["key"] for t in (file.thumbnails or {}).values() if t["key"] not in keep]
    updated = File.objects.filter(id=file.id).exclude(state=File.State.DELETED).update(
        thumbnails=made, updated_at=timezone.now())
    if not updated:  # deleted while we worked: leave nothing behind
        _remove_bytes([*keep], storage.file_dir(file.tenant.name, file.id))
        raise Refused(f"file {file.id} was deleted meanwhile")
    for key in stale:
        storage.delete_key(key)
    file.thumbnails = made
    return file


# Places: rename, move, copy -----------------------------------------------------------------

def file_rename(*, file: File, name: str, on_clash: str = "refuse", operation: str) -> File:
    name = _clean(name, clean_name, "name")
    return file_move(file=file, folder=None, name=name, on_clash=on_clash, operation=operation)


def file_move(*, file: File, folder: str | None, name: str | None = None,
              on_clash: str = "refuse", operation: str) -> File:
    """Move (and/or rename) an active file; ``folder`` None keeps its folder."""
    if folder is not None:
        folder = _clean(folder, clean_folder, "to_folder")
    if name is not None:
        name = _clean(name, clean_name, "name")
    with transaction.atomic():
        file = _locked(file)
        if operation and file.last_operation == operation:
            return file  # this very operation already ran
        if file.state != File.State.ACTIVE:
            raise Refused(f"file {file.id} is {file.state}; only active files can be "
                          "renamed or moved")
        folder = file.folder if folder is None else folder
        name = file.name if name is None else name
        if (file.folder, file.name) == (folder, name):
            File.objects.filter(id=file.id).update(last_operation=operation)
            return file
        return _place(file, folder=folder, name=name, on_clash=on_clash, operation=operation)


def file_copy(*, file: File, folder: str, name: str | None = None, on_clash: str = "refuse",
              operation: str) -> File:
    """Copy an active file (original and thumbnails, byte for byte) to ``folder``.
    The copy's id derives from ``operation``: a rerun returns the same copy."""
    folder = _clean(folder, clean_folder, "to_folder")
    name = _clean(name if name is not None else file.name, clean_name, "name")
    copy_id = derived_id(file.tenant, f"copy:{operation}")
    existing = File.objects.filter(id=copy_id).first()
    if existing is not None:
        return existing
    if file.state != File.State.ACTIVE:
        raise Refused(f"file {file.id} is {file.state}; only active files can be copied")
    tenant_name = file.tenant.name
    image_format = next(fmt for fmt, ext in storage.EXTENSIONS.items()
                        if file.storage_key.endswith(ext))
    key = storage.original_key(tenant_name, copy_id, image_format)
    storage.write_bytes(key, _read_original(file))
    thumbs = {}
    for edge, thumb in (file.thumbnails or {}).items():
        if thumb["key"] == file.storage_key:  # this size is the original itself
            thumbs[edge] = {**thumb, "key": key}
            continue
        new_key = storage.thumbnail_key(tenant_name, copy_id, int(edge), thumb["format"])
        storage.write_bytes(new_key, storage.read_bytes(thumb["key"], limit=thumb["bytes"]))
        thumbs[edge] = {**thumb, "key": new_key}
    copy = File(id=copy_id, tenant=file.tenant, size=file.size, content_type=file.content_type,
                width=file.width, height=file.height, checksum=file.checksum,
                storage_key=key, thumbnails=thumbs)
    try:
        return _place(copy, folder=folder, name=name, on_clash=on_clash, creating=True)
    except Refused:
        _remove_bytes(_keys_of(copy), storage.file_dir(tenant_name, copy_id))
        raise


# Trash, restore, delete, purge -------------------------------------------------------------

def file_trash(*, file: File) -> File:
    """Move an active file to the trash (restorable until purged); its name is freed."""
    with transaction.atomic():
        file = _locked(file)
        if file.state == File.State.DELETED:
            raise Refused(f"file {file.id} was permanently deleted")
        if file.state == File.State.ACTIVE:
            _set_trashed(file)
            file.refresh_from_db()
    return file


def file_restore(*, file: File, on_clash: str = "refuse", operation: str = "") -> File:
    """Bring a trashed file back to its folder and name (a clash handled as asked)."""
    with transaction.atomic():
        file = _locked(file)
        if file.state == File.State.ACTIVE:
            return file
        if file.state == File.State.DELETED:
            raise Refused(f"file {file.id} was permanently deleted; it cannot be restored")
        return _place(file, folder=file.folder, name=file.name, on_clash=on_clash,
                      operation=operation)


def file_delete(*, file: File) -> File:
    """Delete a file for good: the row says ``deleted`` first, then its original and
    thumbnails leave the storage (a rerun removes whatever is left)."""
    with transaction.atomic():
        file = _locked(file)
        if file.state != File.State.DELETED:
            now = timezone.now()
            File.objects.filter(id=file.id).update(state=File.State.DELETED, deleted_at=now,
                                                   updated_at=now)
    _remove_bytes(_keys_of(file), storage.file_dir(file.tenant.name, file.id))
    File.objects.filter(id=file.id).update(thumbnails={})
    file.refresh_from_db()
    return file


def file_purge_trashed(*, older_than, limit: int = 10_000) -> int:
    """Permanently delete files trashed longer than ``older_than`` (a timedelta); at
    most ``limit`` per call, oldest first. Returns how many."""
    cutoff = timezone.now() - older_than
    old = (File.objects.select_related("tenant")
           .filter(state=File.State.TRASHED, trashed_at__lt=cutoff)
           .order_by("trashed_at")[:limit])
    purged = 0
    for file in old:
        if file_delete(file=file).state == File.State.DELETED:
            purged += 1
    return purged
