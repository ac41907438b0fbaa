"""A tenant's image files: metadata here, bytes in the media storage (``media.storage``).

The bytes of a file live under a key derived from its id, never from its folder
or name: renaming, moving, trashing and restoring are one UPDATE of this row on
any storage (no S3 copy-and-delete), and a rerun of any of them writes nothing
twice.
"""
from __future__ import annotations

import uuid

from django.db import models


class File(models.Model):
    """One image of one tenant, at ``folder``/``name`` while active."""

    class State(models.TextChoices):
        ACTIVE = "active"
        TRASHED = "trashed", "trashed (restorable)"
        DELETED = "deleted", "deleted (bytes removed)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="files")
    folder = models.CharField(max_length=1000, blank=True,
                              help_text="Slash-separated, relative; empty for the top folder.")
    name = models.CharField(max_length=255)
    size = models.BigIntegerField(help_text="Bytes of the original.")
    content_type = models.CharField(max_length=64)
    width = models.PositiveIntegerField(help_text="As displayed (EXIF orientation applied).")
    height = models.PositiveIntegerField()
    checksum = models.CharField(max_length=64, help_text="SHA-256 of the original, hex.")
    storage_key = models.CharField(max_length=500, help_text="Key of the original in storage.")
    thumbnails = models.JSONField(
        default=dict, blank=True,
        help_text="{longest edge: {key, width, height, format, bytes}}.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    last_operation = models.CharField(
        max_length=64, blank=True,
        help_text="Key of the last rename/move/restore applied: a rerun of it is a no-op.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    trashed_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["folder", "name"]
        indexes = [
            models.Index(fields=["tenant", "state", "folder", "name"]),
            # The purge's scan: trashed files by age.
            models.Index(fields=["trashed_at"], name="media_file_trashed",
                         condition=models.Q(state="trashed")),
        ]
        constraints = [
            # Trashed and deleted files keep their old place without blocking it.
            models.UniqueConstraint(fields=["tenant", "folder", "name"],
                                    condition=models.Q(state="active"),
                                    name="media_file_active_path"),
        ]

    def __str__(self) -> str:
        return f"{self.path} [{self.state}]"

    @property
    def path(self) -> str:
        return f"{self.folder}/{self.name}" if self.folder else self.name
