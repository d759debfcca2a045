import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import ConfigError, ImageError
from engine.io.visuals import check_plotting, contact_sheet, loss_curve, loss_curves, progress_gif, save_image16

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def solid_snapshots(folder, sizes, colours=COLOURS):
    paths = []
    for i, (size, colour) in enumerate(zip(sizes, colours)):
        paths.append(folder / f"out_at_iteration_{i + 1}.png")
        Image.new("RGB", size, colour).save(paths[-1])
    return paths


def fake_iterations(count=10, maxfun=20, tv=True):
    """A run record's 'iterations': losses falling as a run's do, tv optionally zero (weight 0)."""
    return [{"iteration": i, "loss": 1e6 / i, "content": 2e5 / i ** 0.5, "style": 8e5 / i ** 1.5,
             "tv": 1e3 * i if tv else 0.0, "evaluations": maxfun, "seconds": 1.0, "size": [64, 48]}
            for i in range(1, count + 1)]


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


# --- contact sheet -------------------------------------------------------------------------

def test_contact_sheet_lays_snapshots_out_in_a_near_square_grid(tmp_path):
    shots = solid_snapshots(tmp_path, [(40, 30)] * 5)
    sheet_path = tmp_path / "sheet.png"
    contact_sheet(shots, sheet_path, labels=[f"iteration {i}" for i in range(1, 6)], thumb=64)
    sheet = Image.open(sheet_path)
    assert sheet.format == "PNG" and sheet.mode == "RGB"
    pixels = np.asarray(sheet)
    # 5 images: 3 columns, 2 rows of 64 x 48 thumbnails (40 x 30 scaled up to fit 64 px).
    assert sheet.width == 3 * (64 + 8) + 8
    cell_height = (sheet.height - 8) // 2
    for i, colour in enumerate(COLOURS):
        x, y = 8 + (i % 3) * 72, 8 + (i // 3) * cell_height
        assert tuple(pixels[y + 24, x + 32]) == colour, f"snapshot {i} is not in its cell"
        label_strip = pixels[y + 48: y + cell_height - 8, x: x + 64]
        assert (label_strip.max(axis=-1) < 128).any(), f"snapshot {i} has no label"
    assert tuple(pixels[8 + cell_height + 24, 8 + 2 * 72 + 32]) == (255, 255, 255), "the sixth cell is empty"


def test_contact_sheet_fits_snapshots_of_several_sizes_to_one_thumbnail_size(tmp_path):
    shots = solid_snapshots(tmp_path, [(20, 10), (80, 40), (200, 100)])
    contact_sheet(shots, tmp_path / "sheet.png", columns=3, thumb=50)
    pixels = np.asarray(Image.open(tmp_path / "sheet.png"))
    for i, colour in enumerate(COLOURS[:3]):
        x = 8 + i * (50 + 8)
        cell = pixels[8:8 + 25, x:x + 50]
        assert (cell == colour).all(axis=-1).mean() > 0.95, f"snapshot {i} does not fill a 50 x 25 cell"


def test_contact_sheet_is_written_atomically_and_checks_its_arguments(tmp_path):
    shots = solid_snapshots(tmp_path, [(16, 16)] * 2)
    with pytest.raises(ValueError, match="no snapshots"):
        contact_sheet([], tmp_path / "sheet.png")
    with pytest.raises(ValueError, match="1 labels for 2 snapshots"):
        contact_sheet(shots, tmp_path / "sheet.png", labels=["only one"])
    (tmp_path / "file").write_text("")
    with pytest.raises(ImageError, match="cannot write"):
        contact_sheet(shots, tmp_path / "file" / "sheet.png")
    contact_sheet(shots, tmp_path / "sheet.png", columns=1)
    assert files_in(tmp_path) == ["file", "out_at_iteration_1.png", "out_at_iteration_2.png", "sheet.png"]
    assert Image.open(tmp_path / "sheet.png").height > 2 * Image.open(tmp_path / "sheet.png").width - 20


def test_contact_sheet_of_real_photos(tmp_path):
    shots = [EXAMPLES / "content.jpg", EXAMPLES / "style.jpg", EXAMPLES / "content.jpg"]
    contact_sheet(shots, tmp_path / "sheet.png", labels=["iteration 1", "iteration 2", "iteration 3"], thumb=128)
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.size == (2 * (128 + 8) + 8, sheet.height) and sheet.height > 2 * 96


# --- progress GIF --------------------------------------------------------------------------

def test_progress_gif_has_every_snapshot_in_order_and_holds_the_last(tmp_path):
    shots = solid_snapshots(tmp_path, [(24, 16)] * 3)
    progress_gif(shots, tmp_path / "run.gif", seconds_per_frame=0.2)
    gif = Image.open(tmp_path / "run.gif")
    assert gif.format == "GIF" and gif.n_frames == 3 and gif.info["loop"] == 0
    durations = []
    for i in range(3):
        gif.seek(i)
        durations.append(gif.info["duration"])
        assert gif.convert("RGB").getpixel((12, 8)) == COLOURS[i]
    assert durations[:2] == [200, 200] and durations[2] > 200


def test_progress_gif_frames_take_the_last_snapshots_size_capped(tmp_path):
    shots = solid_snapshots(tmp_path, [(25, 10), (50, 20), (100, 40)])
    progress_gif(shots, tmp_path / "run.gif", max_side=60)
    gif = Image.open(tmp_path / "run.gif")
    assert gif.size == (60, 24)
    for i in range(3):
        gif.seek(i)
        assert gif.convert("RGB").size == (60, 24)
        assert gif.convert("RGB").getpixel((30, 12)) == COLOURS[i]
    assert files_in(tmp_path) == [p.name for p in shots] + ["run.gif"]


def test_progress_gif_of_one_snapshot(tmp_path):
    shots = solid_snapshots(tmp_path, [(10, 10)])
    progress_gif(shots, tmp_path / "run.gif")
    assert Image.open(tmp_path / "run.gif").n_frames == 1


# --- loss curves ---------------------------------------------------------------------------

def test_loss_curve_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    loss_curve(fake_iterations(), tmp_path / "loss.png")
    plot = Image.open(tmp_path / "loss.png")
    assert plot.format == "PNG" and plot.width > 400 and plot.height > 300
    assert files_in(tmp_path) == ["loss.png"]


def test_loss_curve_leaves_out_terms_a_log_axis_cannot_show(tmp_path):
    pytest.importorskip("matplotlib")
    loss_curve(fake_iterations(tv=False), tmp_path / "loss.png")
    assert Image.open(tmp_path / "loss.png").format == "PNG"


def test_loss_curves_compare_runs_on_one_plot(tmp_path):
    pytest.importorskip("matplotlib")
    curves = {"seed": fake_iterations(10, 20), "continuous": fake_iterations(20, 10)}
    loss_curves(curves, tmp_path / "compare.png", title="optimizer modes")
    assert Image.open(tmp_path / "compare.png").format == "PNG"


def test_loss_curve_of_no_iterations_is_refused(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="no iterations"):
        loss_curve([], tmp_path / "loss.png")


def test_missing_matplotlib_is_a_config_error_saying_what_to_install(tmp_path, monkeypatch):
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import fail
    with pytest.raises(ConfigError, match=r"pip install 'nst-engine\[plot\]'"):
        loss_curve(fake_iterations(), tmp_path / "loss.png")
    with pytest.raises(ConfigError, match="matplotlib"):
        check_plotting()
    assert files_in(tmp_path) == []


# --- 16-bit output -------------------------------------------------------------------------

def float_image(height=5, width=7):
    image = np.random.default_rng(0).uniform(0, 255, (height, width, 3))
    image[0, 0] = [-5.0, 300.0, 127.6]  # clipped to 0 and 255; 127.6 * 257 rounds to 32793
    return image


def expected_samples(image):
    return np.rint(np.clip(image, 0, 255) * 257).astype(np.uint16)


def decode_png16(data):
    """Our own reading of a 16-bit RGB PNG: chunks with their CRCs, IHDR, filter-0 rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind}"
        chunks.append((kind, body))
        pos += 12 + length
    kinds = [k for k, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, compression, filtering, interlace) == (16, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + width * 6)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].copy().view(">u2").reshape(height, width, 3)


def decode_tiff16(data):
    """Our own reading of a one-strip, uncompressed, little-endian 16-bit RGB TIFF."""
    assert data[:4] == b"II*\x00"
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd:ifd + 2])
    tags = {}
    for i in range(count):
        tag, kind, n, value = struct.unpack("<HHII", data[ifd + 2 + 12 * i: ifd + 14 + 12 * i])
        tags[tag] = value if kind == 4 or n > 1 else value & 0xFFFF
    width, height = tags[256], tags[257]
    assert struct.unpack("<3H", data[tags[258]:tags[258] + 6]) == (16, 16, 16)
    assert (tags[259], tags[262], tags[277], tags[278], tags[284]) == (1, 2, 3, height, 1)
    strip = data[tags[273]:tags[273] + tags[279]]
    assert len(strip) == width * height * 6
    return np.frombuffer(strip, "<u2").reshape(height, width, 3)


@pytest.mark.parametrize("suffix, decode", [(".png", decode_png16), (".tif", decode_tiff16), (".TIFF", decode_tiff16)])
def test_16_bit_files_hold_the_rounded_input_exactly(tmp_path, suffix, decode):
    image = float_image()
    path = tmp_path / f"out{suffix}"
    save_image16(image, path)
    samples = decode(path.read_bytes())
    assert samples[0, 0].tolist() == [0, 65535, 32793]
    assert np.array_equal(samples, expected_samples(image))
    assert files_in(tmp_path) == [path.name]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_pillow_reads_16_bit_files_as_their_top_8_bits(tmp_path, suffix):
    image = float_image(12, 9)
    save_image16(image.astype(np.float32), tmp_path / f"out{suffix}")
    with Image.open(tmp_path / f"out{suffix}") as read:
        assert read.size == (9, 12) and read.mode == "RGB"
        assert np.array_equal(np.asarray(read), (expected_samples(image) >> 8).astype(np.uint8))


@pytest.mark.parametrize("suffix, decode", [(".png", decode_png16), (".tif", decode_tiff16)])
def test_16_bit_accepts_a_non_contiguous_array(tmp_path, suffix, decode):
    planar = float_image().transpose(2, 0, 1).copy()
    image = planar.transpose(1, 2, 0)  # (H, W, 3) as a view of (3, H, W), as a CHW -> HWC transpose gives
    assert not image.flags.c_contiguous
    save_image16(image, tmp_path / f"out{suffix}")
    assert np.array_equal(decode((tmp_path / f"out{suffix}").read_bytes()), expected_samples(image))


def test_16_bit_keeps_the_8_bit_levels_exactly(tmp_path):
    levels = np.arange(256, dtype=np.float64).reshape(16, 16, 1).repeat(3, axis=2)
    save_image16(levels, tmp_path / "out.png")
    assert np.array_equal(decode_png16((tmp_path / "out.png").read_bytes()), levels.astype(np.uint16) * 257)


def test_16_bit_output_needs_a_png_or_tiff_name_and_a_float_rgb_array(tmp_path):
    with pytest.raises(ImageError, match=r"16-bit output needs a \.png or \.tif"):
        save_image16(float_image(), tmp_path / "out.jpg")
    with pytest.raises(ValueError, match="float array"):
        save_image16(np.zeros((4, 4, 3), np.uint8), tmp_path / "out.png")
    with pytest.raises(ValueError, match="shape"):
        save_image16(np.zeros((4, 4)), tmp_path / "out.png")
    assert files_in(tmp_path) == []
