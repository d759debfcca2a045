"""Property-based tests (hypothesis): image loading never fails but with ImageError, reads every
mode and bit depth right; TransferConfig is either valid or a ConfigError, never another exception."""
from __future__ import annotations

import io
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from engine import ConfigError, TransferConfig
from engine.errors import ImageError
from engine.io.images import load_image
from engine.models.vgg import conv_layer_names

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
         b"RIFF\x00\x00\x00\x00WEBP"]


def _write(data: bytes, suffix: str = ".img") -> Path:
    folder = Path(tempfile.mkdtemp(prefix="nst-hyp-"))
    path = folder / f"x{suffix}"
    path.write_bytes(data)
    return path


def _valid_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(16 * 12 * 3, dtype=np.uint8).reshape(12, 16, 3)).save(buffer, "PNG")
    return buffer.getvalue()


VALID_PNG = _valid_png()


@FAST
@given(st.sampled_from(MAGIC), st.binary(max_size=2048))
def test_random_bytes_load_as_an_image_or_raise_image_error(magic, body):
    path = _write(magic + body)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # quietly: no warning of Pillow's reaches the user
            image = load_image(path)
    except ImageError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
    else:
        assert image.mode == "RGB" and min(image.size) >= 1


@FAST
@given(st.integers(0, len(VALID_PNG) - 1), st.integers(0, 255), st.booleans())
def test_damaged_images_load_or_raise_image_error(position, value, truncate):
    data = bytearray(VALID_PNG)
    if truncate:
        data = data[:position]
    else:
        data[position] = value
    path = _write(bytes(data), ".png")
    try:
        image = load_image(path)
    except ImageError as exc:
        assert str(path) in str(exc)
    else:
        assert image.mode == "RGB" and image.size == (16, 12)


# (mode, format, lossless): every mode Pillow writes in each format engine users give.
MODES = [("1", "PNG", True), ("L", "PNG", True), ("LA", "PNG", True), ("P", "PNG", True), ("RGB", "PNG", True),
         ("RGBA", "PNG", True), ("I;16", "PNG", True), ("I", "TIFF", True), ("L", "JPEG", False),
         ("RGB", "JPEG", False), ("CMYK", "JPEG", False), ("RGB", "TIFF", True), ("CMYK", "TIFF", True),
         ("I;16", "TIFF", True), ("F", "TIFF", True), ("RGBA", "TIFF", True), ("P", "GIF", True), ("L", "GIF", True),
         ("RGB", "BMP", True), ("P", "BMP", True), ("RGB", "WEBP", False), ("RGBA", "WEBP", False)]


def _expected_rgb(image: Image.Image) -> np.ndarray:
    """The RGB a viewer shows, computed in float64 here: 16-bit scaled by 1/257, alpha over white."""
    if image.mode in ("I;16", "I"):
        grey = np.clip(np.rint(np.asarray(image, np.float64) / 257.0), 0, 255)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "F":
        grey = np.clip(np.asarray(image, np.float64), 0, 255)  # Pillow's own F -> RGB: clipped values
        return np.repeat(np.floor(grey)[..., None], 3, axis=2)
    rgba = np.asarray(image.convert("RGBA"), np.float64)
    alpha = rgba[..., 3:] / 255.0
    return rgba[..., :3] * alpha + 255.0 * (1 - alpha)


def _random_image(mode: str, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    if mode in ("I;16", "I"):
        image = Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.uint16))  # I;16
        return image if mode == "I;16" else image.convert("I")
    if mode == "F":
        return Image.fromarray(rng.uniform(-20, 280, (height, width)).astype(np.float32))
    if mode == "P":
        return Image.fromarray(rng.integers(0, 256, (height, width, 3)).astype(np.uint8)).quantize(16)
    if mode == "1":
        return Image.fromarray(rng.integers(0, 256, (height, width)).astype(np.uint8)).convert("1")
    bands = len(Image.new(mode, (1, 1)).getbands())
    pixels = rng.integers(0, 256, (height, width, bands)).astype(np.uint8)
    return Image.frombytes(mode, (width, height), pixels.tobytes())


@pytest.mark.parametrize("kind", MODES, ids=[f"{mode}-{fmt}" for mode, fmt, _ in MODES])
@settings(max_examples=8, deadline=None)
@given(st.integers(1, 24), st.integers(1, 24), st.integers(0, 2**32 - 1))
def test_every_mode_and_bit_depth_loads_as_the_rgb_a_viewer_shows(kind, width, height, seed):
    mode, image_format, lossless = kind
    image = _random_image(mode, width, height, np.random.default_rng(seed))
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    path = _write(buffer.getvalue(), f".{image_format.lower()}")
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (width, height)
    if lossless and image_format != "GIF":
        with Image.open(path) as written:
            expected = _expected_rgb(written if mode != "F" else image)
        assert np.abs(np.asarray(loaded, np.float64) - expected).max() <= 1.0


def test_an_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 6), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    loaded = load_image(_write(buffer.getvalue(), ".gif"))
    assert loaded.getpixel((4, 3)) == (255, 0, 0)


# ---------------------------------------------------------------- TransferConfig

LAYERS = list(conv_layer_names("vgg16"))
ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(LAYERS + ["vgg16", "vgg19", "max", "avg", "noise", "content", "seed",
                                                    "gatys", "luminance", "continuous"]),
    st.lists(st.one_of(st.integers(-3, 5), st.floats(-1, 1e4), st.sampled_from(LAYERS)), max_size=6),
    st.tuples(st.floats(0, 10), st.floats(0, 10)), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(object()), st.just(b"bytes"), st.just(np.float32(1.5)), st.just(np.int64(3)))
FIELDS = [f for f in TransferConfig.__dataclass_fields__]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), ANY, max_size=5))
def test_transfer_config_is_valid_or_a_config_error(values):
    try:
        config = TransferConfig(**values)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    # A valid config is valid all the way: it survives its own round trip.
    assert TransferConfig(**config.to_dict()) == config
    assert len(config.style_weights) == len(config.style_layers)
    assert all(math.isfinite(w) and w >= 0 for w in (*config.style_weights, config.content_weight, config.tv_weight))
