"""Real images for the media tests, made by Pillow at test time, and media fixtures.

Nothing is read from disk: every JPEG, PNG and WebP is drawn here, the bad
ones too (a truncated JPEG, text, zero bytes, a PNG whose header claims a
30,000 x 30,000 image: a decompression bomb).
"""
from __future__ import annotations

import io
import random
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from django.conf import settings
from PIL import Image


def _picture(width: int, height: int, seed: int = 0, mode: str = "RGB",
             grain: float = 0.25) -> Image.Image:
    """Something like a photograph: soft colour fields with grain (more grain, more bytes)."""
    rng = random.Random(seed)
    small = Image.new("RGB", (8, 6))
    small.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(48)])
    image = small.resize((width, height), Image.Resampling.BICUBIC)
    tile = Image.merge("RGB", [Image.effect_noise((256, 256), 24 + 4 * i + seed % 7)
                               for i in range(3)])
    noise = Image.new("RGB", (width, height))
    for x in range(0, width, 256):
        for y in range(0, height, 256):
            noise.paste(tile, (x, y))
    image = Image.blend(image, noise, grain)
    return image.convert(mode) if mode != "RGB" else image


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, image_format, **options)
    return out.getvalue()


def jpeg(width: int = 640, height: int = 480, seed: int = 0, quality: int = 88,
         orientation: int | None = None) -> bytes:
    """A JPEG; with ``orientation`` an EXIF Orientation tag (6: turn 90 degrees clockwise)."""
    options: dict = {"quality": quality}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    return encode(_picture(width, height, seed), "JPEG", **options)


def png(width: int = 320, height: int = 200, seed: int = 1) -> bytes:
    return encode(_picture(width, height, seed, "RGBA"), "PNG")


def webp(width: int = 300, height: int = 300, seed: int = 2) -> bytes:
    return encode(_picture(width, height, seed), "WEBP", quality=80)


def truncated_jpeg() -> bytes:
    whole = jpeg(800, 600, seed=3)
    return whole[: len(whole) // 2]


def not_an_image() -> bytes:
    return b"%PDF-1.4 this is a document, not a picture\n" * 40


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` 1-bit pixels, in under 1 KB:
    decoding it would need 900 million pixels of memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 4096, 9)) + chunk(b"IEND", b""))


def jpeg_of_about(target: int, seed: int = 0) -> bytes:
    """A grainy, photo-like JPEG of about ``target`` bytes (within 5 %)."""
    def make(width: int) -> bytes:
        return encode(_picture(width, width * 3 // 4, seed, grain=0.6), "JPEG", quality=92)

    width = 400
    data = make(width)
    for _ in range(4):
        if abs(len(data) - target) < target * 0.05:
            break
        width = max(16, int(width * (target / len(data)) ** 0.5))
        data = make(width)
    return data


@pytest.fixture
def media_dirs():
    """This run's media storage and import folders, empty for each test."""
    roots = [Path(settings.SWITCHYARD_MEDIA_ROOT), Path(settings.SWITCHYARD_MEDIA_IMPORT_ROOT)]
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    yield roots
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)
    try:
        roots[0].parent.rmdir()  # this run's folder, once empty
    except OSError:
        pass


def put_import(tenant_name: str, relative: str, data: bytes) -> Path:
    """Place ``data`` in the tenant's import folder at ``relative``."""
    path = Path(settings.SWITCHYARD_MEDIA_IMPORT_ROOT) / tenant_name / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def stored_files(tenant_name: str) -> list[str]:
    """Every key under the tenant's storage folder, sorted (staging included)."""
    root = Path(settings.SWITCHYARD_MEDIA_ROOT) / tenant_name
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
