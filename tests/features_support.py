"""Helpers shared by the tests/test_features_*.py modules (not a test module itself).

Everything here is written without the engine's own image or loss code, so the
tests can use it for expected values: Caffe-convention preprocessing with Pillow
and NumPy, NTSC YIQ, a 16-bit PNG reader, and recorders for what the engine feeds
ONNX Runtime and L-BFGS-B.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

import engine.run.engine as run_engine
from engine import StyleTransfer, TransferConfig

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / "examples" / "content.jpg"    # 451x300
STYLE = ROOT / "examples" / "style.jpg"        # 512x408

MEAN_BGR = np.array([103.939, 116.779, 123.68])   # Keras "caffe" mode
SEED_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
# The seed's starry_tubingen weights and loop (noise start, L-BFGS restarted each iteration) at a size that runs in well under a second.
TINY = dict(size=32, content_layer="block4_conv2", style_layers=SEED_LAYERS, content_weight=100.0,
            style_weights=(1000.0, 100.0, 12.0, 1.0, 1.0), tv_weight=200.0, optimizer_mode="seed", init="noise",
            iterations=1, maxfun=3)
# Shallow layers (4 px size multiple): cheap for the float64 reference, and little border effect.
SHALLOW = dict(content_layer="block2_conv2", style_layers=("block1_conv1", "block2_conv1", "block3_conv1"),
               style_weights=(1000.0, 100.0, 12.0))
# VGG16's channel counts per block, from the paper (Simonyan & Zisserman, table 1).
VGG16_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}

# NTSC RGB -> YIQ (rows Y, I, Q).
YIQ = np.array([[0.299, 0.587, 0.114],
                [0.596, -0.274, -0.322],
                [0.211, -0.523, 0.312]])


def tiny_config(**changes) -> TransferConfig:
    return TransferConfig(**{**TINY, **changes})


def engine_for(models_dir: Path, **changes) -> StyleTransfer:
    return StyleTransfer(tiny_config(**changes), models_dir=models_dir, provider="cpu", threads=2)


def rgb_of(source) -> Image.Image:
    return source.convert("RGB") if isinstance(source, Image.Image) else Image.open(source).convert("RGB")


def caffe(source, size_wh: tuple[int, int]) -> np.ndarray:
    """An image (path or Pillow) resized with Lanczos to size_wh -> float64 (1,3,H,W) BGR minus the mean."""
    image = rgb_of(source)
    if image.size != tuple(size_wh):
        image = image.resize(tuple(size_wh), Image.Resampling.LANCZOS)
    bgr = np.asarray(image, np.float64)[..., ::-1] - MEAN_BGR
    return bgr.transpose(2, 0, 1)[None]


def uncaffe(x: np.ndarray) -> np.ndarray:
    """(1,3,H,W) Caffe convention -> float64 (H,W,3) RGB 0..255 (not clipped)."""
    x = np.asarray(x, np.float64).reshape(3, *np.shape(x)[-2:])
    return (x + MEAN_BGR[:, None, None])[::-1].transpose(1, 2, 0)


def relative_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(np.asarray(pixels, np.uint8), "RGB").save(path)
    return path


def periodic_texture(width: int, height: int, period: int = 8) -> np.ndarray:
    """A colourful pattern that repeats every ``period`` px both ways: (H, W, 3) uint8."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    phase_x, phase_y = 2 * np.pi * x / period, 2 * np.pi * y / period
    checker = ((x // (period // 2) + y // (period // 2)) % 2) * 2 - 1
    r = 128 + 70 * np.sin(phase_x) + 50 * checker
    g = 128 + 90 * np.cos(phase_y)
    b = 128 + 60 * np.sin(phase_x + phase_y) - 40 * checker
    return np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)


def read_png16(path: Path) -> tuple[dict, np.ndarray]:
    """A PNG's IHDR fields, and for 16-bit RGB its samples as uint16 (H, W, 3). No Pillow involved."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc, = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR"
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    header = dict(width=width, height=height, bit_depth=depth, colour_type=colour, interlace=interlace)
    if depth != 16 or colour != 2 or interlace != 0:
        return header, np.zeros((0, 0, 3), np.uint16)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * 6
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + stride)
    out = np.zeros((height, stride), np.int64)
    bpp = 6
    for r in range(height):   # undo the PNG row filters (spec section 9)
        kind, line = rows[r, 0], rows[r, 1:].astype(np.int64)
        prior = out[r - 1] if r else np.zeros(stride, np.int64)
        cur = np.zeros(stride, np.int64)
        for i in range(stride):
            a = cur[i - bpp] if i >= bpp else 0
            b = prior[i]
            c = prior[i - bpp] if i >= bpp else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[i] = (line[i] + pred) & 0xFF
        out[r] = cur
    samples = out.astype(np.uint8).reshape(height, width * 3, 2)
    return header, (samples[..., 0].astype(np.uint16) << 8 | samples[..., 1]).reshape(height, width, 3)


class SessionRuns:
    """Counts every ONNX Runtime run (plain and IO-binding) while installed with ``install``."""

    def __init__(self):
        self.calls: list = []

    def install(self, monkeypatch) -> "SessionRuns":
        real_run, real_bound = ort.InferenceSession.run, ort.InferenceSession.run_with_iobinding

        def run(session, *args, **kwargs):
            self.calls.append(("run", session))
            return real_run(session, *args, **kwargs)

        def bound(session, *args, **kwargs):
            self.calls.append(("iobinding", session))
            return real_bound(session, *args, **kwargs)

        monkeypatch.setattr(ort.InferenceSession, "run", run)
        monkeypatch.setattr(ort.InferenceSession, "run_with_iobinding", bound)
        return self


def capture_constants(monkeypatch) -> list[dict[str, np.ndarray]]:
    """The inputs each new loss-gradient evaluator binds (targets, weights, pool scales), in order."""
    captured: list[dict[str, np.ndarray]] = []
    real = run_engine.LossGradEvaluator

    class Recording(real):
        def __init__(self, session, constants, shape):
            captured.append({k: np.array(v, copy=True) for k, v in constants.items()})
            super().__init__(session, constants, shape)

    monkeypatch.setattr(run_engine, "LossGradEvaluator", Recording)
    return captured


def record_evaluated_points(monkeypatch) -> list[np.ndarray]:
    """Every x the optimiser evaluates (copies, float64, flat or shaped as given)."""
    points: list[np.ndarray] = []
    real = run_engine.Problem.loss_and_grad

    def loss_and_grad(self, x):
        points.append(np.array(x, np.float64, copy=True))
        return real(self, x)

    monkeypatch.setattr(run_engine.Problem, "loss_and_grad", loss_and_grad)
    return points


def record_prepared(monkeypatch) -> list:
    """Every Problem that Engine.prepare returns."""
    problems: list = []
    real = run_engine.Engine.prepare

    def prepare(self, *args, **kwargs):
        problem = real(self, *args, **kwargs)
        problems.append(problem)
        return problem

    monkeypatch.setattr(run_engine.Engine, "prepare", prepare)
    return problems
