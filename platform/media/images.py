"""Image checks and thumbnails with Pillow.

A file is judged by its content, never its name: Pillow identifies it among
the accepted formats only (JPEG, PNG, WebP; no other decoder is even tried),
its header's size is checked against ``SWITCHYARD_MEDIA_MAX_PIXELS`` before any
pixel is decoded (a decompression bomb is a small file claiming a huge image),
and then it is decoded in full, so a truncated or corrupt file is refused too.
JPEGs are decoded at a reduced scale when the largest thumbnail allows it
(``Image.draft``): the whole entropy-coded stream is still read.

Memory: a decoded image is held once. ``header_cost`` reads only the header
(``Image.open`` is lazy), so a lane can be chosen by decoded pixels before any
decode. The decoded image is never copied at full size: EXIF orientation is
applied to each thumbnail, not to the full image, and the largest thumbnail
is scaled from the decoded image in place (``in_place``). docs/media.md#memory
gives the measured peak per pixel.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

#: Accepted formats and their content types.
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
#: EXIF orientations that turn the image a quarter (width and height swap).
_QUARTER_TURNS = {5, 6, 7, 8}
#: What each EXIF orientation asks for to show the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_ORIENTATION = 0x0112
#: Modes each output format can store; anything else is converted first.
_SAVE_MODES = {"JPEG": {"RGB", "L"}, "PNG": {"1", "L", "LA", "P", "RGB", "RGBA"},
               "WEBP": {"RGB", "RGBA"}}


#: Peak bytes per decoded pixel of checking and thumbnailing one image, measured on
#: 24-megapixel images (tests/test_memory.py, docs/media.md#memory): a JPEG up to 9.1
#: (progressive CMYK: libjpeg holds every coefficient), a PNG 5.6 (9.6 with alpha:
#: resampling premultiplies into a second full-size image), a WebP 16.4 (the decoder
#: hands over a full frame that is copied once). Rounded up, with 6 % or more to spare.
BYTES_PER_PIXEL = {"JPEG": 10, "PNG": 10, "WEBP": 18}
#: A PNG without an alpha band is not premultiplied before resampling.
_OPAQUE_PNG_BYTES_PER_PIXEL = 6


def decode_cost(image_format: str | None, pixels: int, mode: str | None = None) -> int:
    """Peak bytes that decoding and thumbnailing an image of ``pixels`` in
    ``image_format`` takes; ``mode`` (from the header), when known, refines it."""
    if image_format == "PNG" and mode is not None and mode not in ("RGBA", "LA", "PA"):
        return pixels * _OPAQUE_PNG_BYTES_PER_PIXEL
    return pixels * BYTES_PER_PIXEL.get(image_format or "", max(BYTES_PER_PIXEL.values()))


class ImageRefused(ValueError):
    """The content is not an image Switchyard accepts; the message says why."""


@dataclass
class Decoded:
    format: str
    content_type: str
    #: As displayed: EXIF orientation applied.
    width: int
    height: int
    #: Decoded pixels as stored (possibly at a reduced scale): ``orientation`` is not
    #: applied here but to each thumbnail (``thumbnail``), so no full-size copy is made.
    image: Image.Image
    #: EXIF orientation (1: as stored).
    orientation: int = 1

    @property
    def upright(self) -> bool:
        """The stored bytes show the image as it is meant to be seen (no EXIF turn)."""
        return self.orientation == 1


class HeaderRefused(ImageRefused):
    """Refused from the header alone (too many pixels, no pixels, not an image)."""


def _open(source, *, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and check the claimed size against ``max_pixels``."""
    # Pillow's own guard (checked when the header is read) follows the setting.
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source, formats=list(CONTENT_TYPES))
        except UnidentifiedImageError:
            raise HeaderRefused("not a JPEG, PNG or WebP image (content not "
                                "recognised)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise HeaderRefused(f"decompression bomb refused: {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise HeaderRefused(f"unreadable image header: {exc}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise HeaderRefused(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise HeaderRefused(f"decompression bomb refused: {width}x{height} is "
                            f"{width * height:,} pixels, over the limit of {max_pixels:,}")
    return image


def header_cost(source) -> int | None:
    """``decode_cost`` of the image whose header ``source`` (a path or a binary file)
    holds, read without decoding a pixel; None if it is not an image Switchyard reads."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source, formats=list(CONTENT_TYPES)) as image:
                width, height = image.size
                return decode_cost(image.format, width * height, image.mode)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return None


def decode(data: bytes, *, max_bytes: int, max_pixels: int, draft_edge: int | None = None,
           max_cost: int | None = None, where: str = "") -> Decoded:
    """Check and decode ``data``; ``ImageRefused`` with the reason otherwise
    (``HeaderRefused`` when the header alone refused it, before any decode).
    ``max_cost`` bounds ``decode_cost`` (bytes), the memory ``where`` (a lane)
    has for one image."""
    if not data:
        raise HeaderRefused("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise HeaderRefused(f"file is over the limit of {max_bytes} bytes")
    image = _open(io.BytesIO(data), max_pixels=max_pixels)
    width, height = image.size
    image_format = image.format
    cost = decode_cost(image_format, width * height, image.mode)
    if max_cost is not None and cost > max_cost:
        raise HeaderRefused(
            f"{width}x{height} {image_format} ({width * height:,} pixels) needs about "
            f"{cost // 2**20:,} MiB to decode; {where or 'this worker'} decodes at most "
            f"{max_cost // 2**20:,} MiB per image (SWITCHYARD_MEDIA_DECODE_BYTES)")
    orientation = image.getexif().get(_ORIENTATION, 1)
    if orientation not in _UPRIGHT:
        orientation = 1
    if draft_edge and image_format == "JPEG":
        image.draft(image.mode, (draft_edge, draft_edge))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRefused(f"decompression bomb refused: {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageRefused(f"corrupt or truncated {image_format} image: {exc}") from None
    if orientation in _QUARTER_TURNS:
        width, height = height, width
    return Decoded(format=image_format, content_type=CONTENT_TYPES[image_format], width=width,
                   height=height, image=image, orientation=orientation)


def shown_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """``size`` of an image as stored, as displayed with its EXIF ``orientation``."""
    return (size[1], size[0]) if orientation in _QUARTER_TURNS else size


def thumbnail(image: Image.Image, *, edge: int, image_format: str, orientation: int = 1,
              in_place: bool = False) -> tuple[bytes, Image.Image]:
    """``image`` (as stored) scaled to fit ``edge`` x ``edge`` (aspect kept, never
    enlarged), turned upright by its EXIF ``orientation`` and encoded as
    ``image_format``: ``(bytes, the scaled image as stored)``. ``in_place`` scales
    ``image`` itself instead of a full-size copy (the caller no longer needs it)."""
    thumb = image
    if max(image.size) > edge:
        if not in_place:
            thumb = image.copy()
        thumb.thumbnail((edge, edge))
    encoded = thumb.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else thumb
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
