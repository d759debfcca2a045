"""Seeing a run: a contact sheet and an animated GIF of the snapshots, loss curves, and
16-bit output. Every file is written atomically.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ConfigError, ImageError
from .files import atomic_path
from .images import load_image

_PAD = 8                 # px around and between the contact sheet's cells
_LAST_FRAME_HOLD = 5     # the GIF's last frame shows this many frame times, so the result is seen
# (record key, legend label) of the run record's loss terms, drawn by loss_curve.
_TERMS = (("loss", "total"), ("content", "content"), ("style", "style"), ("tv", "tv"))


def contact_sheet(snapshots: Sequence[str | os.PathLike], path: str | os.PathLike, columns: int | None = None,
                  labels: Sequence[str] | None = None, thumb: int = 256) -> None:
    """Write a PNG grid of the snapshots, in order, each with a label under it.

    Each image is scaled (up or down, aspect ratio kept) to fit a ``thumb`` x ``thumb`` px
    box, so snapshots of a multi-scale run line up. ``columns`` defaults to a near-square
    grid; ``labels`` to the files' stems (the run passes e.g. "iteration 5").
    """
    if not snapshots:
        raise ValueError("no snapshots to put on a contact sheet")
    labels = [Path(p).stem for p in snapshots] if labels is None else list(labels)
    if len(labels) != len(snapshots):
        raise ValueError(f"{len(labels)} labels for {len(snapshots)} snapshots")
    if thumb < 1 or (columns is not None and columns < 1):
        raise ValueError(f"thumb and columns must be at least 1, got {thumb} and {columns}")
    columns = min(columns or math.ceil(math.sqrt(len(snapshots))), len(snapshots))
    thumbs = [_fit(load_image(p), thumb) for p in snapshots]
    font = ImageFont.load_default()
    label_height = font.getbbox("Iteration 0123456789")[3] + _PAD // 2
    cell_w, cell_h = max(t.width for t in thumbs), max(t.height for t in thumbs)
    rows = math.ceil(len(thumbs) / columns)
    sheet = Image.new("RGB", (columns * (cell_w + _PAD) + _PAD, rows * (cell_h + label_height + _PAD) + _PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, label) in enumerate(zip(thumbs, labels)):
        x = _PAD + (i % columns) * (cell_w + _PAD)
        y = _PAD + (i // columns) * (cell_h + label_height + _PAD)
        sheet.paste(image, (x + (cell_w - image.width) // 2, y + (cell_h - image.height) // 2))
        # Centred by measuring, not by anchor: Pillow's bitmap fallback font takes no anchors.
        text_x = x + (cell_w - draw.textlength(label, font=font)) / 2
        draw.text((text_x, y + cell_h + _PAD // 2), label, fill=(40, 40, 40), font=font)
    with _writing(Path(path)) as tmp:
        sheet.save(tmp, format="PNG")


def progress_gif(snapshots: Sequence[str | os.PathLike], path: str | os.PathLike,
                 seconds_per_frame: float = 0.4, max_side: int = 512) -> None:
    """Write an animated GIF (looping) of the snapshots in order; the last frame is held longer.

    Every frame takes the last snapshot's size, its longest side capped at ``max_side`` px,
    so the coarse snapshots of a multi-scale run are scaled up to it.
    """
    if not snapshots:
        raise ValueError("no snapshots to animate")
    if seconds_per_frame <= 0 or max_side < 1:
        raise ValueError(f"seconds_per_frame must be > 0 and max_side >= 1, got {seconds_per_frame} and {max_side}")
    last = load_image(snapshots[-1])
    size = _fit(last, max_side).size if max(last.size) > max_side else last.size
    frames = [_resized(load_image(p), size) for p in snapshots[:-1]] + [_resized(last, size)]
    frame_ms = max(10, round(1000 * seconds_per_frame))  # GIF counts in 1/100 s
    durations = [frame_ms] * (len(frames) - 1) + [frame_ms * _LAST_FRAME_HOLD]
    with _writing(Path(path)) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)


def loss_curve(iterations: Sequence[dict], path: str | os.PathLike) -> None:
    """Write a PNG plot of one run's total, content, style and tv loss against evaluations (log y).

    ``iterations``: the run record's ``iterations`` list, dicts with keys loss, content,
    style, tv and evaluations (those of that iteration; they are accumulated). Terms
    that are never positive (a zero weight) are left out. Needs matplotlib (the 'plot'
    extra), else raises ConfigError.
    """
    x = _cumulative_evaluations(iterations)
    lines = {label: (x, [r[key] for r in iterations]) for key, label in _TERMS}
    _plot(lines, Path(path), title=None, ylabel="loss")


def loss_curves(curves: dict[str, Sequence[dict]], path: str | os.PathLike, title: str | None = None) -> None:
    """Write a PNG plot comparing runs: each name's total loss against its evaluations (log y).

    ``curves``: name -> that run's ``iterations`` list (as for ``loss_curve``).
    """
    lines = {name: (_cumulative_evaluations(records), [r["loss"] for r in records]) for name, records in curves.items()}
    _plot(lines, Path(path), title=title, ylabel="total loss")


def check_plotting() -> None:
    """Raise ConfigError unless matplotlib can be imported: call before a run that will plot."""
    _figure_class()


def save_image16(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write a float (H, W, 3) RGB image on a 0..255 scale as 16 bits per channel, atomically.

    ``.png`` (colour type 2, bit depth 16) or ``.tif``/``.tiff`` (uncompressed, one strip).
    Values are clipped to 0..255 and mapped to 0..65535 by x * 257, so an 8-bit level k
    becomes k * 257 exactly, as bit replication does.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".tif", ".tiff"):
        raise ImageError(f"cannot write image '{path}': 16-bit output needs a .png or .tif file, "
                         f"not '{path.suffix or path.name}'")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype.kind != "f":
        raise ValueError(f"expected a float array of shape (H, W, 3), got {image.dtype} {image.shape}")
    samples = np.rint(np.clip(np.nan_to_num(image), 0.0, 255.0) * 257.0).astype(np.uint16)
    data = _png16(samples) if suffix == ".png" else _tiff16(samples)
    with _writing(path) as tmp:
        tmp.write_bytes(data)


def _png16(samples: np.ndarray) -> bytes:
    """uint16 (H, W, 3) -> a PNG file: 16-bit RGB, big-endian samples, every row filter 0 (none)."""
    height, width = samples.shape[:2]
    rows = np.zeros((height, 1 + width * 6), np.uint8)  # column 0: each row's filter byte
    rows[:, 1:] = np.ascontiguousarray(samples, ">u2").view(np.uint8).reshape(height, -1)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # depth 16, RGB, deflate, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def _tiff16(samples: np.ndarray) -> bytes:
    """uint16 (H, W, 3) -> a baseline little-endian TIFF: RGB, 16 bits per sample, uncompressed."""
    height, width = samples.shape[:2]
    pixels = samples.astype("<u2").tobytes()
    short, long = 3, 4
    entries = 10
    bits_at = 8 + 2 + 12 * entries + 4  # after the header and the one IFD
    data_at = bits_at + 6
    ifd = [(256, long, 1, width), (257, long, 1, height), (258, short, 3, bits_at),
           (259, short, 1, 1),                # no compression
           (262, short, 1, 2),                # photometric: RGB
           (273, long, 1, data_at), (277, short, 1, 3), (278, long, 1, height), (279, long, 1, len(pixels)),
           (284, short, 1, 1)]                # samples interleaved RGBRGB
    assert len(ifd) == entries
    return (b"II" + struct.pack("<HIH", 42, 8, entries)
            + b"".join(struct.pack("<HHII", *entry) for entry in ifd) + struct.pack("<I", 0)
            + struct.pack("<3H", 16, 16, 16) + pixels)


def _fit(image: Image.Image, box: int) -> Image.Image:
    """``image`` scaled, up or down, to fit a ``box`` x ``box`` square, aspect ratio kept."""
    scale = box / max(image.size)
    return _resized(image, (max(1, round(image.width * scale)), max(1, round(image.height * scale))))


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def _cumulative_evaluations(records: Sequence[dict]) -> np.ndarray:
    return np.cumsum([r["evaluations"] for r in records])


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("the loss plot needs matplotlib: pip install 'nst-engine[plot]' "
                          "(or drop the plot option)") from None
    return Figure


def _plot(lines: dict[str, tuple[np.ndarray, Sequence[float]]], path: Path, title: str | None, ylabel: str) -> None:
    """One log-y line per name against loss-gradient evaluations, saved as PNG."""
    if not any(len(x) for x, _ in lines.values()):
        raise ValueError("no iterations to plot")
    # A Figure with no pyplot: the Agg canvas, and no global backend or figure state in an embedding app.
    figure = _figure_class()(figsize=(7, 4.5), dpi=120, layout="constrained")
    axes = figure.add_subplot()
    for name, (x, y) in lines.items():
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        shown = np.isfinite(y) & (y > 0)  # a log axis cannot show zero terms
        if shown.any():
            axes.plot(x[shown], y[shown], label=name, marker="o" if len(x) <= 50 else None, markersize=3)
    axes.set_yscale("log")
    axes.set_xlabel("loss-gradient evaluations")
    axes.set_ylabel(ylabel)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title)
    with _writing(path) as tmp:
        figure.savefig(tmp, format="png")


@contextmanager
def _writing(path: Path) -> Iterator[Path]:
    """``atomic_path``, with a failed write reported as ImageError naming ``path``."""
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as exc:
        raise ImageError(f"cannot write '{path}': {' '.join(str(exc).split()) or type(exc).__name__}") from None


def tile_mosaic(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write a PNG of 2x2 copies of a uint8 (H, W, 3) image, side by side and above each other,
    so the seams a tile would show (or their absence) are in plain view."""
    with _writing(Path(path)) as tmp:
        Image.fromarray(np.tile(image, (2, 2, 1)), "RGB").save(tmp, format="PNG")
