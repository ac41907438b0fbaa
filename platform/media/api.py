"""The media API (v1): upload files, list and read them, run an operation on a set
of files or a whole folder.

Run by the web. Uploads and operations are jobs (``media.submission``): uploads
answer with one job per file (its lane chosen by its size), operations with a
batch (``/api/v1/batches/{id}`` for progress and failed files). Single-file
operations can also be submitted as jobs:
``POST /api/v1/jobs {"task": "media.rename", "params": {"items": [...]}}``.
"""
from __future__ import annotations

from django.http import FileResponse
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.api_support import (
    CursorPagination,
    StrictSerializer,
    accepted,
    idempotency_key,
    own_or_404,
    paginated,
    refusals,
    refuse_unknown_fields,
)
from jobs.batches import MAX_CHUNK_SIZE
from jobs.serializers import (
    BatchOptionsSerializer,
    BatchOutputSerializer,
    JobOutputSerializer,
    batch_representation,
    parse_options,
)
from media import storage
from media.models import File
from media.paths import clean_folder
from media.selectors import file_get, file_list
from media.serializers import FileOutputSerializer
from media.services import ON_CLASH
from media.submission import OPERATIONS, operation_submit, upload_submit


class FilePagination(CursorPagination):
    ordering = ("folder", "name", "id")


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
            with refusals():
                folder = clean_folder(folder, field="folder")
        files = file_list(tenant=request.auth, folder=folder, recursive=data["recursive"],
                          states=(data["state"],))
        return paginated(self, request, files, FileOutputSerializer)


def _own_file(request, file_id) -> File:
    return own_or_404(file_get(tenant=request.auth, file_id=file_id), "file", file_id)


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
        # A multipart body is a QueryDict, not a dict: StrictSerializer cannot see it.
        refuse_unknown_fields(request.data, self.InputSerializer().fields)
        body = self.InputSerializer(data={**{k: request.data.get(k) for k in request.data
                                             if k != "files"},
                                          "files": request.FILES.getlist("files")})
        body.is_valid(raise_exception=True)
        data = body.validated_data
        with refusals():
            answers = upload_submit(tenant=request.auth, files=data["files"],
                                    folder=data["folder"], on_clash=data["on_clash"],
                                    thumbnails=data["thumbnails"])
        return Response(self.OutputSerializer(answers, many=True,
                                              context={"request": request}).data,
                        status=status.HTTP_202_ACCEPTED)


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
        data = dict(body.validated_data)
        options = parse_options(data.pop("options"), BatchOptionsSerializer)
        key = idempotency_key(request)
        return accepted(
            lambda: operation_submit(tenant=request.auth, options=options,
                                     idempotency_key=key, **data),
            location=lambda batch: reverse("jobs:batch-detail", kwargs={"batch_id": batch.id}),
            render=lambda batch: batch_representation(request, batch))
