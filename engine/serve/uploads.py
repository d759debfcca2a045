"""Uploaded images: decoded and re-encoded by Pillow under byte and pixel limits.

Nothing is kept as uploaded: the bytes are decoded (only raster formats Pillow reads,
never SVG or HTML), their size checked before the pixels are decompressed, and the
pixels re-encoded as a fresh PNG by the job store.
"""
from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from ..errors import ImageError
from ..io.images import upright_srgb

# Raster formats a browser or camera sends; Pillow is told to try no other decoder.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


class UploadRefused(ImageError):
    """An upload that is too big (413), not an image (415) or damaged (400); the message says which."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, field: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """The uploaded bytes of form field ``field`` as an 8-bit sRGB RGB image, upright."""
    if len(data) > max_bytes:
        raise UploadRefused(f"{field}: the file is {len(data) / 2**20:.1f} MB, over the server's limit of "
                            f"{max_bytes / 2**20:g} MB per image (--max-upload-mb): send a smaller file", 413)
    if not data:
        raise UploadRefused(f"{field}: the file is empty: send a PNG, JPEG or WebP image", 400)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                width, height = image.size
                # The header's size, checked before a single pixel is decompressed.
                if width * height > max_pixels:
                    raise UploadRefused(
                        f"{field}: the image is {width}x{height} = {width * height} pixels, over the server's "
                        f"limit of {max_pixels} pixels (--max-pixels): send a smaller image", 413)
                image.load()
                return upright_srgb(image)
    except UploadRefused:
        raise
    except UnidentifiedImageError:
        raise UploadRefused(f"{field}: not an image the server reads: send a PNG, JPEG, WebP, GIF, BMP or TIFF "
                            "(SVG and other vector or document formats are refused)", 415) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard fires while opening, before the size could be read here.
        raise UploadRefused(f"{field}: the image claims more than {Image.MAX_IMAGE_PIXELS} pixels, over the server's "
                            f"limit of {max_pixels} pixels (--max-pixels): send a smaller image", 413) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadRefused(f"{field}: truncated or corrupt image data ({str(exc).splitlines()[0]}): "
                            "save or export it again", 400) from None
