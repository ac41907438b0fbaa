"""Caller paths, confined to the tenant: folders, names and import sources.

Folders and names are logical (they never reach a file system path: bytes are
stored by file id), yet they are held to the same rules as a path would be, so
that what a caller sees is what a file system would accept: no ``..``, no
absolute path, no backslash, no control character. An import source IS a file
system path, under ``<SWITCHYARD_MEDIA_IMPORT_ROOT>/<tenant>/``; it is resolved
(symbolic links followed) and refused when the result leaves that folder.
"""
from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings

from jobs.errors import InvalidSubmission

MAX_FOLDER_LENGTH = 1000
MAX_NAME_LENGTH = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


class PathRefused(InvalidSubmission):
    """A caller's path that would leave the tenant's storage, or is malformed; ``field``
    names it (the API answers 400 naming it, ``jobs.api_support.refusals``)."""


def _segments(value: object, field: str) -> list[str]:
    if not isinstance(value, str):
        raise PathRefused(field, "must be a string")
    if value.startswith(("/", "\\")) or _DRIVE.match(value):
        raise PathRefused(field, f"absolute paths are refused ({value!r}); give a path "
                                 "relative to your storage, e.g. 'albums/2026'")
    if "\\" in value:
        raise PathRefused(field, "backslashes are refused; separate folders with '/'")
    if _CONTROL.search(value):
        raise PathRefused(field, "control characters are refused")
    parts = value.rstrip("/").split("/") if value.rstrip("/") else []
    for part in parts:
        if part == "..":
            raise PathRefused(field, f"'..' is refused ({value!r}): paths stay inside your "
                                     "storage")
        if part in ("", "."):
            raise PathRefused(field, f"empty and '.' segments are refused ({value!r})")
        if part != part.strip():
            raise PathRefused(field, f"a segment may not start or end with spaces ({part!r})")
        if len(part) > MAX_NAME_LENGTH:
            raise PathRefused(field, f"a segment is longer than {MAX_NAME_LENGTH} characters")
    return parts


def clean_folder(value: object, *, field: str = "folder") -> str:
    """The folder, normalised (``"a/b/"`` is ``"a/b"``, ``""`` the top folder)."""
    folder = "/".join(_segments(value, field))
    if len(folder) > MAX_FOLDER_LENGTH:
        raise PathRefused(field, f"longer than {MAX_FOLDER_LENGTH} characters")
    return folder


def clean_name(value: object, *, field: str = "name") -> str:
    """A file name: one segment, no folder in it."""
    parts = _segments(value, field)
    if len(parts) != 1 or (isinstance(value, str) and value.endswith("/")):
        raise PathRefused(field, "must be one file name, without '/' (folders are given "
                                 "separately)")
    return parts[0]


def import_dir(tenant_name: str) -> Path:
    """The folder the tenant may import files from."""
    return Path(settings.SWITCHYARD_MEDIA_IMPORT_ROOT) / tenant_name


def resolve_source(value: object, *, tenant_name: str, field: str = "source") -> Path:
    """The real path of an import source; refused if it (or a symbolic link on the way)
    leads outside the tenant's import folder, or is not a regular file."""
    parts = _segments(value, field)
    if not parts:
        raise PathRefused(field, "give a file path inside your import folder")
    root = import_dir(tenant_name).resolve()
    real = root.joinpath(*parts).resolve()
    if not real.is_relative_to(root):
        raise PathRefused(field, f"{value!r} leads outside your import folder (a symbolic "
                                 "link pointing out of it)")
    if not real.is_file():
        raise PathRefused(field, f"no file at {value!r} in your import folder")
    return real
