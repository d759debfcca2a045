"""Region masks read from images drawn in any paint program, as float arrays in 0..1.

A mask's value at a pixel is how much that pixel belongs to its region. An image with
transparency painted into it (RGBA, LA, a PNG palette with a transparent colour) is read
by its alpha: opaque = in the region, whatever the colour. Any other image is read by its
luminance (ITU-R 601): white = in, black = out, grey = partly. 16-bit grey counts in full.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from . import images


def load_mask(path: str | os.PathLike, size: tuple[int, int],
              max_megapixels: float = images.MAX_MEGAPIXELS) -> np.ndarray:
    """The mask at ``path`` resized (bilinear, stretched if its proportions differ) to ``size``
    = (width, height): float32 (height, width) in 0..1. A mask of more than ``max_megapixels`` is
    refused before decoding, as images are. Raises ImageError naming the file."""
    path = Path(path)
    try:
        with images.open_unchecked(path) as image:
            width, height = image.size
            if width * height > max_megapixels * 1e6:
                raise ImageError(f"cannot read mask '{path}': {width}x{height} px is {width * height / 1e6:.3g} "
                                 f"megapixels, more than the limit of {max_megapixels:g}; give a smaller mask (it is "
                                 "resized to the image anyway) or raise --max-megapixels (max_megapixels)")
            image.load()
            values = _values(ImageOps.exif_transpose(image))
    except FileNotFoundError:
        raise ImageError(f"cannot read mask '{path}': no such file, check the path") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise ImageError(f"cannot read mask '{path}': not a readable image, give a PNG, JPEG, TIFF, WebP or BMP "
                         "(white or opaque where the region is)") from None
    resized = Image.fromarray(values, "F").resize(tuple(size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)


def _values(image: Image.Image) -> np.ndarray:
    if image.has_transparency_data:
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            return alpha.astype(np.float32) / 255.0
    if image.mode == "I" or image.mode.startswith("I;16"):
        return np.asarray(image, np.float32) / 65535.0
    return np.asarray(image.convert("L"), np.float32) / 255.0
