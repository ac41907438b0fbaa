"""Image checks and thumbnails with Pillow.

A file is judged by its content, never its name: Pillow identifies it among
the accepted formats only (JPEG, PNG, WebP; no other decoder is even tried),
its header's size is checked against ``SWITCHYARD_MEDIA_MAX_PIXELS`` before any
pixel is decoded (a decompression bomb is a small file claiming a huge image),
and then it is decoded in full, so a truncated or corrupt file is refused too.
JPEGs are decoded at a reduced scale when the largest thumbnail allows it
(``Image.draft``): the whole entropy-coded stream is still read.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

#: Accepted formats and their content types.
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
#: EXIF orientations that turn the image a quarter (width and height swap).
_QUARTER_TURNS = {5, 6, 7, 8}
_ORIENTATION = 0x0112
#: Modes each output format can store; anything else is converted first.
_SAVE_MODES = {"JPEG": {"RGB", "L"}, "PNG": {"1", "L", "LA", "P", "RGB", "RGBA"},
               "WEBP": {"RGB", "RGBA"}}


class ImageRefused(ValueError):
    """The content is not an image Switchyard accepts; the message says why."""


@dataclass
class Decoded:
    format: str
    content_type: str
    #: As displayed: EXIF orientation applied.
    width: int
    height: int
    #: Decoded pixels, orientation applied (possibly at a reduced scale).
    image: Image.Image
    #: The stored bytes show the image as it is meant to be seen (no EXIF turn).
    upright: bool = True


def decode(data: bytes, *, max_bytes: int, max_pixels: int, draft_edge: int | None = None
           ) -> Decoded:
    """Check and decode ``data``; ``ImageRefused`` with the reason otherwise."""
    if not data:
        raise ImageRefused("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise ImageRefused(f"file is over the limit of {max_bytes} bytes")
    # Pillow's own guard (checked when the header is read) follows the setting.
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=list(CONTENT_TYPES))
        except UnidentifiedImageError:
            raise ImageRefused("not a JPEG, PNG or WebP image (content not recognised)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRefused(f"decompression bomb refused: {exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageRefused(f"unreadable image header: {exc}") from None
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageRefused(f"image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageRefused(f"decompression bomb refused: {width}x{height} is "
                               f"{width * height:,} pixels, over the limit of {max_pixels:,}")
        image_format = image.format
        orientation = image.getexif().get(_ORIENTATION, 1)
        if draft_edge and image_format == "JPEG":
            image.draft(image.mode, (draft_edge, draft_edge))
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRefused(f"decompression bomb refused: {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageRefused(f"corrupt or truncated {image_format} image: {exc}") from None
    if orientation in _QUARTER_TURNS:
        width, height = height, width
    upright = ImageOps.exif_transpose(image)
    return Decoded(format=image_format, content_type=CONTENT_TYPES[image_format], width=width,
                   height=height, image=upright, upright=orientation in (None, 1))


def thumbnail(image: Image.Image, *, edge: int, image_format: str
              ) -> tuple[bytes, Image.Image]:
    """``image`` scaled to fit ``edge`` x ``edge`` (aspect kept, never enlarged),
    encoded as ``image_format``: ``(bytes, the scaled image)``."""
    thumb = image.copy() if max(image.size) > edge else image
    thumb.thumbnail((edge, edge))
    encoded = thumb
    if encoded.mode not in _SAVE_MODES[image_format]:
        has_alpha = "A" in encoded.getbands() or "transparency" in encoded.info
        encoded = encoded.convert("RGBA" if has_alpha and image_format != "JPEG" else "RGB")
    out = io.BytesIO()
    if image_format == "JPEG":
        encoded.save(out, "JPEG", quality=85)
    elif image_format == "WEBP":
        encoded.save(out, "WEBP", quality=85)
    else:
        encoded.save(out, "PNG", compress_level=6)
    return out.getvalue(), thumb
