from __future__ import annotations

from django.urls import path

from media.api import FileContentApi, FileDetailApi, FileListApi, OperationApi, UploadApi

app_name = "media"
urlpatterns = [
    path("uploads", UploadApi.as_view(), name="upload"),
    path("operations", OperationApi.as_view(), name="operation"),
    path("files", FileListApi.as_view(), name="file-list"),
    path("files/<uuid:file_id>", FileDetailApi.as_view(), name="file-detail"),
    path("files/<uuid:file_id>/content", FileContentApi.as_view(), name="file-content"),
]
