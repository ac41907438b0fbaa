"""The media API's serializers (``media.api``), run by the web."""
from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from media.models import File


class FileOutputSerializer(serializers.ModelSerializer):
    thumbnails = serializers.SerializerMethodField()
    content_url = serializers.SerializerMethodField()

    class Meta:
        model = File
        fields = ["id", "folder", "name", "path", "state", "size", "content_type", "width",
                  "height", "checksum", "thumbnails", "content_url", "created_at",
                  "updated_at", "trashed_at", "deleted_at"]

    def _content_url(self, file: File, edge: str | None = None) -> str:
        url = reverse("media:file-content", kwargs={"file_id": file.id})
        return self.context["request"].build_absolute_uri(
            f"{url}?thumbnail={edge}" if edge else url)

    def get_thumbnails(self, file: File) -> dict:
        return {edge: {"width": t["width"], "height": t["height"], "format": t["format"],
                       "bytes": t["bytes"], "url": self._content_url(file, edge)}
                for edge, t in sorted((file.thumbnails or {}).items(), key=lambda e: int(e[0]))}

    def get_content_url(self, file: File) -> str | None:
        return None if file.state == File.State.DELETED else self._content_url(file)
