"""Where a file's bytes live: keys in the ``media`` storage (``settings.STORAGES``).

Keys are derived from the file id, so every write of a task goes to a key it
can compute again: a rerun after a crash rewrites the same keys (the storage
overwrites, see ``SWITCHYARD_MEDIA_STORAGE_OPTIONS``) and never leaves a second
copy beside the first. Local storage is also checked for symbolic links that
would lead a read or a write out of the storage root.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from django.core.files.base import ContentFile, File
from django.core.files.storage import Storage, storages

#: Output extension of each image format.
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}


class StorageEscape(RuntimeError):
    """A key resolved outside the storage root (a symbolic link placed inside it)."""


def media_storage() -> Storage:
    return storages["media"]


def file_dir(tenant_name: str, file_id: uuid.UUID) -> str:
    return f"{tenant_name}/files/{file_id.hex[:2]}/{file_id}"


def original_key(tenant_name: str, file_id: uuid.UUID, image_format: str) -> str:
    return f"{file_dir(tenant_name, file_id)}/original{EXTENSIONS[image_format]}"


def thumbnail_key(tenant_name: str, file_id: uuid.UUID, edge: int, image_format: str) -> str:
    return f"{file_dir(tenant_name, file_id)}/thumb-{edge}{EXTENSIONS[image_format]}"


#: A staged upload's token (``media.submission.upload_stage``): 32 hexadecimal digits.
_TOKEN = re.compile(r"^[0-9a-f]{32}$")


def is_staging_token(value: object) -> bool:
    return isinstance(value, str) and _TOKEN.match(value) is not None


def staging_key(tenant_name: str, token: str) -> str:
    """Where the web leaves an uploaded file for ``media.upload``. ``StorageEscape`` for
    anything but a token the web made: a path in it would lead out of the tenant's
    staging folder (checked here as well as by the API, for any message's item)."""
    if not is_staging_token(token):
        raise StorageEscape(f"not a staged upload token: {str(token)[:80]!r}")
    return f"{tenant_name}/staging/{token}"


def staged_tokens(tenant_name: str) -> list[str]:
    """The tokens of the uploads staged for the tenant (one listing of its folder; each
    caller reads only what it needs of each: the quota a size, the sweep an age)."""
    try:
        _, names = media_storage().listdir(f"{tenant_name}/staging")
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [token for token in names if is_staging_token(token)]


def modified_at(key: str) -> float | None:
    """When ``key`` was last written (epoch seconds); None once it is gone."""
    try:
        return media_storage().get_modified_time(key).timestamp()
    except OSError:  # deleted meanwhile (its upload ran)
        return None


def local_path(key: str) -> Path | None:
    """The file system path of ``key`` on local storage (None on S3), symbolic links
    resolved; ``StorageEscape`` if that leaves the storage root."""
    storage = media_storage()
    try:
        path = Path(storage.path(key))
    except NotImplementedError:
        return None
    root = Path(storage.location).resolve()
    real = path.resolve()
    if not real.is_relative_to(root):
        raise StorageEscape(f"storage key {key!r} resolves outside the media root")
    return real


def read_bytes(key: str, *, limit: int) -> bytes:
    """The bytes at ``key``, at most ``limit`` + 1 of them (so an over-size file shows)."""
    local_path(key)
    with media_storage().open(key, "rb") as fh:
        return fh.read(limit + 1)


def size_of(key: str) -> int | None:
    try:
        local_path(key)
        return media_storage().size(key)
    except (OSError, StorageEscape):
        return None


def write_bytes(key: str, content: bytes | File) -> None:
    """Write ``content`` at exactly ``key``, replacing what was there."""
    local_path(key)
    if isinstance(content, bytes):
        content = ContentFile(content)
    saved = media_storage().save(key, content)
    if saved != key:  # a storage that renames instead of overwriting breaks idempotency
        media_storage().delete(saved)
        raise RuntimeError(f"the media storage saved {key!r} as {saved!r}: configure it to "
                           "overwrite (allow_overwrite / file_overwrite)")


def delete_key(key: str) -> None:
    """Remove ``key`` if present (a missing key is not an error: reruns delete twice)."""
    local_path(key)
    media_storage().delete(key)


def prune_empty_dir(key_dir: str) -> None:
    """Remove a file's folder on local storage once it is empty (S3 has no folders)."""
    try:
        path = local_path(key_dir)
    except StorageEscape:
        return
    if path is not None:
        try:
            os.rmdir(path)
        except OSError:
            pass
