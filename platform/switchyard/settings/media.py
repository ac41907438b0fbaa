"""Media settings (docs/media.md): where files are stored, which lane a file's job runs
in, and the limits on what is decoded. Read by ``base`` (``from .media import *``), so
``production`` and ``test`` override them by name like any other setting."""
from __future__ import annotations

import json
import os
from pathlib import Path

from routing import topology as _topology
from switchyard.settings.environment import VAR_DIR, env_int

# docs/media.md. Files go through Django's storage API (the "media" storage below):
# FileSystemStorage under SWITCHYARD_MEDIA_ROOT by default, S3 through django-storages
# (SWITCHYARD_MEDIA_STORAGE=storages.backends.s3.S3Storage) in production.
# https://docs.djangoproject.com/en/5.2/ref/settings/#storages
SWITCHYARD_MEDIA_ROOT = Path(os.environ.get("SWITCHYARD_MEDIA_ROOT") or VAR_DIR / "media")
# Files a tenant may import by path live under <import root>/<tenant name>/.
SWITCHYARD_MEDIA_IMPORT_ROOT = Path(os.environ.get("SWITCHYARD_MEDIA_IMPORT_ROOT")
                                    or VAR_DIR / "import")
SWITCHYARD_MEDIA_STORAGE = (os.environ.get("SWITCHYARD_MEDIA_STORAGE")
                            or "django.core.files.storage.FileSystemStorage")
# Keyword arguments of the storage class, as JSON (e.g. {"bucket_name": "media"} for S3).
# The local default writes over a file of the same name: tasks rewrite the same key on a
# rerun instead of leaving a second copy beside it.
SWITCHYARD_MEDIA_STORAGE_OPTIONS = json.loads(
    os.environ.get("SWITCHYARD_MEDIA_STORAGE_OPTIONS") or "null"
) or ({"location": str(SWITCHYARD_MEDIA_ROOT), "allow_overwrite": True}
      if SWITCHYARD_MEDIA_STORAGE.endswith("FileSystemStorage") else {})
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "media": {"BACKEND": SWITCHYARD_MEDIA_STORAGE, "OPTIONS": SWITCHYARD_MEDIA_STORAGE_OPTIONS},
}
# An upload, thumbnail or copy job (or batch chunk) with a file of at least this many
# bytes runs in the slow lane, and so does one whose files add up to QUICK_CHUNK_BYTES;
# small files run in the quick lane.
SWITCHYARD_MEDIA_SLOW_LANE_BYTES = env_int("SWITCHYARD_MEDIA_SLOW_LANE_BYTES", 1024 * 1024)
SWITCHYARD_MEDIA_QUICK_CHUNK_BYTES = env_int("SWITCHYARD_MEDIA_QUICK_CHUNK_BYTES",
                                             32 * 1024 * 1024)
SWITCHYARD_MEDIA_MAX_FILE_BYTES = env_int("SWITCHYARD_MEDIA_MAX_FILE_BYTES", 50 * 1024 * 1024)
# Largest multipart body of POST /api/v1/media/uploads (several files at once).
SWITCHYARD_MEDIA_MAX_UPLOAD_BODY_BYTES = env_int("SWITCHYARD_MEDIA_MAX_UPLOAD_BODY_BYTES",
                                                 256 * 1024 * 1024)
# Images claiming more pixels are refused as decompression bombs before decoding.
SWITCHYARD_MEDIA_MAX_PIXELS = env_int("SWITCHYARD_MEDIA_MAX_PIXELS", 90_000_000)
# Memory (bytes) one pool process of each lane has for decoding one image, which
# media.images.decode_cost estimates from the header (pixels x measured bytes per
# pixel of the format). An image that needs more than quick's goes to slow; more than
# the lane it runs in is refused, never decoded. From the pods (deploy/k8s/workers.yaml):
# (pod limit - ~100 MiB for the worker's main process) / concurrency - ~90 MiB for a
# pool process at rest, with about 20 % (quick) and 13 % (slow) kept spare:
# quick (1 GiB - 100) / 4 - 90 = 141 MiB -> 112 MiB; slow (2 GiB - 100) / 2 - 90 =
# 884 MiB -> 768 MiB. docs/media.md#memory
SWITCHYARD_MEDIA_DECODE_BYTES = {
    lane.name: env_int(f"SWITCHYARD_MEDIA_DECODE_BYTES_{lane.name.upper()}",
                       {"quick": 112, "slow": 768}.get(lane.name, 112) * 1024 * 1024)
    for lane in _topology.LANES
}
# Longest edge of each thumbnail, in pixels.
SWITCHYARD_MEDIA_THUMBNAIL_SIZES = sorted({
    int(size) for size in (os.environ.get("SWITCHYARD_MEDIA_THUMBNAIL_SIZES")
                           or "128,512,1024").split(",") if size.strip()
})
SWITCHYARD_MEDIA_TRASH_RETENTION_DAYS = env_int("SWITCHYARD_MEDIA_TRASH_RETENTION_DAYS", 30)
SWITCHYARD_MEDIA_PURGE_EVERY = float(os.environ.get("SWITCHYARD_MEDIA_PURGE_EVERY") or 3600)
