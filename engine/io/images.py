"""Images in and out: load as display-ready sRGB, resize, convert to and from the network's input.

The network's convention is the seed's (Keras "caffe"): see ``engine.vgg.INPUT_CONVENTION``.
"""
from __future__ import annotations

import io
import math
import os
import struct
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from .files import atomic_path
from ..models.vgg import MEAN_BGR

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
            ".webp": "WEBP", ".bmp": "BMP"}
# Pillow's default quality 75 visibly smears the fine texture a style transfer makes.
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}
_MEAN_BGR = np.array(MEAN_BGR, np.float32)
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


MAX_MEGAPIXELS = 200.0
"""Largest image load_image reads by default (megapixels; 200 MP is ~600 MB decoded)."""
# JPEGs larger than this are decoded at a reduced scale (DCT scaling) when a smaller size is all
# that is needed; smaller ones are decoded whole, so results on ordinary photos do not change.
_DRAFT_ABOVE_PIXELS = 8_000_000
_PILLOW_LIMIT = threading.Lock()


def load_image(path: str | os.PathLike, fit: int | None = None,
               max_megapixels: float = MAX_MEGAPIXELS) -> Image.Image:
    """The image at ``path`` as an 8-bit RGB image in sRGB, upright as a viewer shows it.

    EXIF orientation is applied, an embedded ICC profile is converted to sRGB,
    transparency is composited on white, and an animated image gives its first frame.
    ``fit``: the longest edge (px) the caller will resize to; a JPEG above 8 megapixels
    is then decoded at the smallest power-of-two reduction that keeps both sides at least
    2 * fit (memory stays bounded for huge photos). An image of more than
    ``max_megapixels`` is refused before decoding. Raises ImageError naming the file.
    """
    path = Path(path)

    def error(reason: str) -> ImageError:
        return ImageError(f"cannot read image '{path}': {reason}")

    if not path.exists():
        raise error("no such file, check the path")
    if path.is_dir():
        raise error("it is a folder, not an image file")
    try:
        with _quiet_pillow(), open_unchecked(path) as image:
            width, height = image.size
            if width * height > max_megapixels * 1e6:
                raise error(f"{width}x{height} px is {width * height / 1e6:.3g} megapixels, more than the limit of "
                            f"{max_megapixels:g}; raise it with --max-megapixels (max_megapixels) if that is meant")
            if fit and image.format == "JPEG" and width * height > _DRAFT_ABOVE_PIXELS:
                image.draft(image.mode, (2 * fit, 2 * fit))
            image.load()  # decode everything now, so a truncated file fails here and not mid-run
            return upright_srgb(image)
    except PermissionError:
        raise error("permission denied, check the file's permissions") from None
    except UnidentifiedImageError:
        raise error("not an image file Pillow can read, give a PNG, JPEG, TIFF, WebP or BMP") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        # Pillow reports truncated or damaged data as any of these.
        raise error(f"truncated or corrupt image data ({_one_line(exc)}), "
                    "save or download it again") from None


@contextmanager
def _quiet_pillow() -> Iterator[None]:
    # Pillow warns about damaged EXIF and the like and reads on; so do we, without the noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextmanager
def open_unchecked(path: Path) -> Iterator[Image.Image]:
    """Image.open without Pillow's own decompression-bomb check: load_image and masks.load_mask apply their
    documented limit instead (Pillow's warns from 89 MP, a size ordinary cameras reach)."""
    with _PILLOW_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with image:
        yield image


def upright_srgb(image: Image.Image) -> Image.Image:
    """A decoded image as 8-bit RGB in sRGB: turned upright by its EXIF orientation, its ICC profile
    applied, 16-bit grey scaled, transparency flattened onto white."""
    icc = image.info.get("icc_profile")
    return _to_srgb(ImageOps.exif_transpose(image), icc)


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    if image.mode == "I" or image.mode.startswith("I;16"):
        # 16-bit grey: convert("L") would clip at 255 instead of scaling 0-65535 to 0-255.
        grey = np.asarray(image, np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L")
    if image.has_transparency_data:
        flat_mode = "L" if image.mode in ("L", "LA", "La") else "RGB"  # keep grey for a grey profile
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA")).convert(flat_mode)
    if image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            image = ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken or mismatched profile: show the pixels as sRGB, as browsers do
    return image.convert("RGB")


def working_size(image_size: tuple[int, int], size: int | None, multiple: int = 1) -> tuple[int, int]:
    """(width, height) to compute at: longest edge scaled to ``size`` px (None keeps it),
    then each side rounded to the nearest multiple of ``multiple`` (at least ``multiple``)."""
    width, height = image_size
    if size is not None:
        scale = size / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    # floor(v + 0.5) rounds halves up, where round() would round them to even.
    return tuple(max(multiple, multiple * math.floor(side / multiple + 0.5)) for side in (width, height))


def preprocess(image: Image.Image, size_wh: tuple[int, int]) -> np.ndarray:
    """The network input: float32 (1, 3, H, W), BGR, ImageNet mean subtracted, 0-255 scale.

    ``image`` is resized (Lanczos) to ``size_wh`` = (width, height) when it differs.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != tuple(size_wh):
        image = image.resize(tuple(size_wh), Image.Resampling.LANCZOS)
    bgr = np.asarray(image, np.float32)[:, :, ::-1] - _MEAN_BGR
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[np.newaxis])


def deprocess(x: np.ndarray) -> np.ndarray:
    """The inverse of ``preprocess``: (1, 3, H, W) network input to a uint8 (H, W, 3) RGB array."""
    if x.ndim != 4 or x.shape[:2] != (1, 3):
        raise ValueError(f"expected an array of shape (1, 3, H, W), got {x.shape}")
    bgr = x[0].transpose(1, 2, 0) + _MEAN_BGR
    return np.clip(np.rint(bgr[:, :, ::-1]), 0, 255).astype(np.uint8)


def save_image(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 (H, W, 3) RGB array atomically; the format follows the suffix."""
    path = Path(path)
    image_format = _format_for(path)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 array of shape (H, W, 3), got {image.dtype} {image.shape}")
    try:
        with atomic_path(path) as tmp:
            # The temp name ends in .tmp<suffix>; say the format rather than trust the name.
            options = _SAVE_OPTIONS.get(image_format, {})
            Image.fromarray(image, "RGB").save(tmp, format=image_format, **options)
    except OSError as exc:
        raise ImageError(f"cannot write image '{path}': {_one_line(exc)}") from None


def output_path(path: str | os.PathLike) -> Path:
    """The image file an output name means: a name without a suffix is a prefix, as in the
    seed (``out/cat`` -> ``out/cat.png``, snapshots ``out/cat_at_iteration_N.png``). A name
    ending in a slash is a folder, even one that does not exist yet."""
    if isinstance(path, str) and path.endswith(("/", os.sep)):
        raise ImageError(f"cannot write image '{path}': it names a folder, give a file name such as "
                         f"{Path(path) / 'out.png'}")
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"cannot write image '{path}': it is a folder, give a file name such as {path / 'out.png'}")
    return path if path.suffix else path.with_name(path.name + ".png")


def check_writable(path: str | os.PathLike) -> None:
    """Raise ImageError unless ``save_image`` could write ``path``; creates nothing.

    Meant to run before any computing, so a long run never ends unable to save.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"cannot write image '{path}': it is a folder, give a file name such as {path / 'out.png'}")
    _format_for(path)
    folder = path.parent
    while not folder.exists():  # the nearest folder that exists must take the ones save_image creates
        folder = folder.parent
    if not folder.is_dir():
        raise ImageError(f"cannot write image '{path}': '{folder}' is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or _one_line(exc)
        raise ImageError(f"cannot write image '{path}': folder '{folder}' is not writable ({reason}), "
                         "choose another output path") from None


def _format_for(path: Path) -> str:
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise ImageError(f"cannot write image '{path}': unknown image type '{path.suffix or path.name}', "
                         f"use one of {', '.join(_FORMATS)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
