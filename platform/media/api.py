"""The media API (v1): upload files, list and read them, run an operation on a set
of files or a whole folder.

Uploads and operations are jobs: uploads answer with one job per file (its
lane chosen by its size), operations with a batch (``/api/v1/batches/{id}``
for progress and failed files). Single-file operations can also be submitted
as jobs: ``POST /api/v1/jobs {"task": "media.rename", "params": {"items": [...]}}``.
"""
from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.http import FileResponse
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.api import (
    JobOutputSerializer,
    StrictSerializer,
    accepted,
    idempotency_key,
    parse_options,
    quota_exceeded,
)
from jobs.batch_api import BatchOptionsSerializer, BatchOutputSerializer, batch_representation
from jobs.batches import MAX_CHUNK_SIZE, batch_submit, max_items
from jobs.services import InvalidSubmission, QuotaExceeded, job_submit
from media import storage
from media.models import File
from media.paths import PathRefused, clean_folder, clean_name
from media.selectors import file_get, file_list
from media.services import ON_CLASH, upload_discard, upload_stage
from switchyard.pagination import CursorPagination

#: Operations on a set of files, the task each runs and the states a folder gives.
OPERATIONS = {
    "thumbnail": ("media.thumbnail", (File.State.ACTIVE,)),
    "copy": ("media.copy", (File.State.ACTIVE,)),
    "move": ("media.move", (File.State.ACTIVE,)),
    "trash": ("media.trash", (File.State.ACTIVE,)),
    "restore": ("media.restore", (File.State.TRASHED,)),
    "delete": ("media.delete", (File.State.ACTIVE, File.State.TRASHED)),
}
_NEEDS_FOLDER = {"copy", "move"}
_TAKES_ON_CLASH = {"copy", "move", "restore"}


def _confined(value, cleaner, field: str) -> str:
    try:
        return cleaner(value, field=field)
    except PathRefused as exc:
        raise ValidationError({exc.field: [exc.message]}) from None


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


class FilePagination(CursorPagination):
    ordering = ("folder", "name", "id")
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class FileListApi(APIView):
    """``GET /api/v1/media/files?folder=&recursive=&state=``: the caller's files."""

    pagination_class = FilePagination  # documents the list's pages in the schema

    class FilterSerializer(serializers.Serializer):
        folder = serializers.CharField(required=False, allow_blank=True)
        recursive = serializers.BooleanField(default=False)
        state = serializers.ChoiceField(choices=File.State.choices, default=File.State.ACTIVE)

    @extend_schema(parameters=[FilterSerializer], responses={200: FileOutputSerializer(many=True)})
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        folder = data.get("folder")
        if folder is not None:
            folder = _confined(folder, clean_folder, "folder")
        files = file_list(tenant=request.auth, folder=folder, recursive=data["recursive"],
                          states=(data["state"],))
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(files, request, view=self)
        return paginator.get_paginated_response(
            FileOutputSerializer(page, many=True, context={"request": request}).data)


def _own_file(request, file_id) -> File:
    file = file_get(tenant=request.auth, file_id=file_id)
    if file is None:
        raise NotFound(f"no file {file_id}")
    return file


class FileDetailApi(APIView):
    """``GET /api/v1/media/files/{id}``: one of the caller's files."""

    @extend_schema(responses={200: FileOutputSerializer})
    def get(self, request, file_id):
        return Response(FileOutputSerializer(_own_file(request, file_id),
                                             context={"request": request}).data)


class FileContentApi(APIView):
    """``GET /api/v1/media/files/{id}/content?thumbnail=EDGE``: the image's bytes."""

    @extend_schema(responses={(200, "image/*"): bytes})
    def get(self, request, file_id):
        file = _own_file(request, file_id)
        if file.state == File.State.DELETED:
            raise NotFound(f"file {file_id} was permanently deleted")
        edge = request.query_params.get("thumbnail")
        if edge:
            thumb = (file.thumbnails or {}).get(edge)
            if thumb is None:
                raise ValidationError({"thumbnail": [
                    f"no {edge!r} thumbnail; this file has {sorted(file.thumbnails, key=int)}"]})
            key, content_type = thumb["key"], f"image/{thumb['format'].lower()}"
        else:
            key, content_type = file.storage_key, file.content_type
        storage.local_path(key)
        return FileResponse(storage.media_storage().open(key, "rb"), content_type=content_type)


class UploadApi(APIView):
    """``POST /api/v1/media/uploads`` (multipart): one ``media.upload`` job per file."""

    parser_classes = [MultiPartParser]

    class InputSerializer(serializers.Serializer):
        folder = serializers.CharField(required=False, allow_blank=True, default="")
        on_clash = serializers.ChoiceField(choices=ON_CLASH, default="refuse")
        thumbnails = serializers.BooleanField(default=True)
        files = serializers.ListField(child=serializers.FileField(allow_empty_file=True),
                                      allow_empty=False, help_text="one or more images")

    class OutputSerializer(serializers.Serializer):
        name = serializers.CharField()
        size = serializers.IntegerField()
        job = JobOutputSerializer()

    @extend_schema(request={"multipart/form-data": InputSerializer},
                   responses={202: OutputSerializer(many=True)})
    def post(self, request):
        unknown = sorted(set(request.data) - {"folder", "on_clash", "thumbnails", "files"})
        if unknown:
            raise ValidationError({key: ["unknown field; accepted: folder, on_clash, "
                                         "thumbnails, files"] for key in unknown})
        body = self.InputSerializer(data={**{k: request.data.get(k) for k in request.data
                                             if k != "files"},
                                          "files": request.FILES.getlist("files")})
        body.is_valid(raise_exception=True)
        data = body.validated_data
        folder = _confined(data["folder"], clean_folder, "folder")
        limit = settings.SWITCHYARD_MEDIA_MAX_FILE_BYTES
        items = []
        for index, uploaded in enumerate(data["files"]):
            field = f"files.{index}"
            name = _confined(uploaded.name, clean_name, field)
            if uploaded.size == 0:
                raise ValidationError({field: [f"{name}: empty file (0 bytes)"]})
            if uploaded.size > limit:
                raise ValidationError({field: [f"{name}: {uploaded.size} bytes is over the "
                                               f"limit of {limit} bytes"]})
            items.append((uploaded, name))
        tenant, staged, answers = request.auth, [], []
        try:
            for uploaded, _ in items:
                staged.append(upload_stage(tenant=tenant, uploaded=uploaded))
            with transaction.atomic():
                for (uploaded, name), token in zip(items, staged, strict=True):
                    item = {"staged": token, "folder": folder, "name": name,
                            "on_clash": data["on_clash"], "thumbnails": data["thumbnails"]}
                    job, _ = job_submit(tenant=tenant, task="media.upload",
                                        params={"items": [item]})
                    answers.append({"name": name, "size": uploaded.size, "job": job})
        except InvalidSubmission as exc:
            self._discard(tenant, staged)
            raise ValidationError({exc.field: [exc.message]}) from exc
        except QuotaExceeded as exc:
            self._discard(tenant, staged)
            return quota_exceeded(exc)
        except Exception:
            self._discard(tenant, staged)
            raise
        return Response(self.OutputSerializer(answers, many=True,
                                              context={"request": request}).data,
                        status=status.HTTP_202_ACCEPTED)

    @staticmethod
    def _discard(tenant, tokens: list[str]) -> None:
        for token in tokens:
            upload_discard(tenant=tenant, token=token)


class OperationApi(APIView):
    """``POST /api/v1/media/operations``: one operation on a set of files or a folder,
    as a batch (progress and failed files at ``/api/v1/batches/{id}``)."""

    class InputSerializer(StrictSerializer):
        operation = serializers.ChoiceField(choices=sorted(OPERATIONS))
        files = serializers.ListField(child=serializers.UUIDField(), required=False,
                                      allow_empty=False)
        folder = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
        recursive = serializers.BooleanField(default=False)
        to_folder = serializers.CharField(required=False, allow_blank=True,
                                          trim_whitespace=False)
        on_clash = serializers.ChoiceField(choices=ON_CLASH, required=False)
        format = serializers.ChoiceField(choices=["JPEG", "PNG", "WEBP"], required=False)
        chunk_size = serializers.IntegerField(min_value=1, max_value=MAX_CHUNK_SIZE,
                                              required=False)
        options = serializers.DictField(required=False, default=dict)

    @extend_schema(request=InputSerializer, responses={202: BatchOutputSerializer})
    def post(self, request):
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        operation = data["operation"]
        task, states = OPERATIONS[operation]
        if ("files" in data) == ("folder" in data):
            raise ValidationError({"files": ["give either files (ids) or folder"]})
        if operation in _NEEDS_FOLDER and "to_folder" not in data:
            raise ValidationError({"to_folder": [f"{operation} needs a to_folder"]})
        for field, allowed in (("to_folder", _NEEDS_FOLDER), ("on_clash", _TAKES_ON_CLASH),
                               ("format", {"thumbnail"})):
            if field in data and operation not in allowed:
                raise ValidationError({field: [f"not taken by {operation}"]})
        extra = {key: data[key] for key in ("on_clash", "format") if key in data}
        if "to_folder" in data:
            extra["to_folder"] = _confined(data["to_folder"], clean_folder, "to_folder")
        if "files" in data:
            ids = [str(file_id) for file_id in data["files"]]
        else:
            folder = _confined(data["folder"], clean_folder, "folder")
            ids = [str(pk) for pk in file_list(tenant=request.auth, folder=folder,
                                               recursive=data["recursive"], states=states)
                   .order_by("folder", "name").values_list("id", flat=True)[:max_items() + 1]]
            if not ids:
                raise ValidationError({"folder": [f"no {'/'.join(states)} files in "
                                                  f"{folder or 'the top folder'!r}"]})
        if len(ids) > max_items():
            raise ValidationError({"files": [f"at most {max_items()} files in one operation"]})
        items = [{"file": file_id, **extra} for file_id in ids]
        options = parse_options(data["options"], BatchOptionsSerializer)
        key = idempotency_key(request)
        return accepted(
            lambda: batch_submit(tenant=request.auth, task=task, items=items,
                                 chunk_size=data.get("chunk_size"), options=options,
                                 idempotency_key=key),
            location=lambda batch: reverse("jobs:batch-detail", kwargs={"batch_id": batch.id}),
            render=lambda batch: batch_representation(request, batch))
