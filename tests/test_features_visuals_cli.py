"""Seeing a run (contact sheet, GIF, loss plot, 16-bit output), every feature through
``nst stylize`` into the run record, and one clear error line for conflicting options.

Files are checked by decoding them here: the GIF and sheet with Pillow against the
snapshots, the 16-bit PNG byte by byte (features_support.read_png16).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import engine
from engine import ConfigError, Engine
from conftest import error_line, written
from engine.cli import app
from features_support import CONTENT, STYLE, engine_for, periodic_texture, read_png16, write_png

runner = CliRunner()
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def models_dir(vgg16_onnx) -> Path:
    return vgg16_onnx.parent


def stylize(models_dir, output, *extra, style=STYLE):
    args = ["stylize", str(CONTENT), *([str(style)] if style is not None else []), "-o", str(output),
            "--size", "32", "--iterations", "2", "--maxfun", "3", "--threads", "2", "--provider", "cpu",
            "--models-dir", str(models_dir), *extra]
    return runner.invoke(app, args)




def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), np.float64)


@pytest.fixture
def no_computing(monkeypatch) -> list:
    """Fails the test if Engine.prepare (targets, sessions: the computing) is reached."""
    reached = []

    def prepare(self, *args, **kwargs):
        reached.append(args)
        pytest.fail("prepare() ran: the error came after computing started")

    monkeypatch.setattr(Engine, "prepare", prepare)
    return reached


# ---------------------------------------------------------------- sheet, GIF, plot, 16 bits


@pytest.fixture(scope="module")
def visual_run(tmp_path_factory, models_dir):
    """A 3-iteration API run with a snapshot each, the sheet, the GIF and (with matplotlib) the plot."""
    folder = tmp_path_factory.mktemp("visuals")
    # Content and a heavy tv from noise: the noise melts away fast, so the snapshots differ.
    result = engine_for(models_dir, iterations=3, maxfun=5, content_weight=1.0, style_weights=(0.0,) * 5,
                        tv_weight=1e3, sheet=True, gif=True, plot=HAS_MATPLOTLIB).run(
        CONTENT, STYLE, folder / "cat.png")
    return folder, result


def test_gif_has_one_frame_per_snapshot_in_order(visual_run):
    folder, result = visual_run
    snapshots = [it.snapshot for it in result.iterations]
    assert [s.name for s in snapshots] == [f"cat_at_iteration_{n}.png" for n in (1, 2, 3)]
    with Image.open(folder / "cat.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == 3
        frames = []
        for k in range(gif.n_frames):
            gif.seek(k)
            frames.append(np.asarray(gif.convert("RGB"), np.float64))
    shots = [pixels(s) for s in snapshots]
    for k, frame in enumerate(frames):
        assert frame.shape == shots[k].shape
        # The GIF's 256-colour palette costs a few levels; frame k is snapshot k, not another one.
        errors = [np.abs(frame - shot).mean() for shot in shots]
        assert errors[k] < 10 and errors[k] == min(errors), errors


def test_contact_sheet_is_a_grid_holding_every_snapshot_in_order(visual_run):
    from scipy import ndimage

    folder, result = visual_run
    sheet = pixels(folder / "cat_sheet.png")
    shots = [pixels(it.snapshot) for it in result.iterations]
    # The thumbnails are the three largest non-background regions (the labels are small).
    regions, count = ndimage.label(np.any(np.abs(sheet - 255.0) > 0, axis=-1))
    boxes = sorted(ndimage.find_objects(regions), key=lambda b: (b[0].stop - b[0].start) * (b[1].stop - b[1].start))
    cells = sorted(boxes[-3:], key=lambda b: (b[0].start, b[1].start))   # reading order
    assert len({b[0].start for b in cells}) == 2 and len({b[1].start for b in cells}) == 2   # a 2x2 grid
    for k, cell in enumerate(cells):
        thumb = sheet[cell]
        assert thumb.shape[0] > shots[k].shape[0] and thumb.shape[1] > shots[k].shape[1]
        assert thumb.shape[1] / thumb.shape[0] == pytest.approx(32 / 21, rel=0.03)   # aspect kept
        errors = []
        for shot in shots:
            scaled = Image.fromarray(shot.astype(np.uint8)).resize((thumb.shape[1], thumb.shape[0]),
                                                                   Image.Resampling.LANCZOS)
            errors.append(np.abs(np.asarray(scaled, np.float64) - thumb).mean())
        assert errors[k] < 2 and errors[k] == min(errors), errors   # cell k is snapshot k


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib (the 'plot' extra) is not installed")
def test_plot_writes_a_loss_curve_png(visual_run):
    folder, _ = visual_run
    with Image.open(folder / "cat_loss.png") as plot:
        assert plot.format == "PNG"
        assert plot.width >= 300 and plot.height >= 200
        assert np.asarray(plot.convert("L")).std() > 5    # not a blank canvas


def test_visual_files_are_named_after_the_output_and_nothing_else_is_written(visual_run):
    folder, _ = visual_run
    expected = ["cat.gif", "cat.json", "cat.png", "cat_at_iteration_1.png", "cat_at_iteration_2.png",
                "cat_at_iteration_3.png", "cat_sheet.png"] + (["cat_loss.png"] if HAS_MATPLOTLIB else [])
    assert written(folder) == sorted(expected)
    record = json.loads((folder / "cat.json").read_text())
    assert record["config"]["sheet"] is True and record["config"]["gif"] is True


def test_bit_depth_16_writes_a_16_bit_png_of_the_result(tmp_path, models_dir):
    output = tmp_path / "deep.png"
    result = engine_for(models_dir, bit_depth=16, save_every=0).run(CONTENT, STYLE, output)
    header, samples = read_png16(output)
    assert header["bit_depth"] == 16 and header["colour_type"] == 2
    assert (header["width"], header["height"]) == (32, 21)
    # The same picture as the 8-bit result, with the precision 8 bits would round away.
    np.testing.assert_allclose(samples / 257.0, result.image, atol=0.5 + 1e-6)
    assert np.any(samples % 257 != 0)
    assert json.loads((tmp_path / "deep.json").read_text())["config"]["bit_depth"] == 16


def test_bit_depth_16_rejects_a_jpeg_output_before_computing(tmp_path, models_dir, no_computing):
    with pytest.raises(ConfigError, match="16-bit"):
        engine_for(models_dir, bit_depth=16).run(CONTENT, STYLE, tmp_path / "deep.jpg")
    assert no_computing == [] and written(tmp_path) == []


@pytest.fixture
def hidden_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)


def test_plot_without_matplotlib_is_a_config_error_before_computing(tmp_path, models_dir, hidden_matplotlib,
                                                                    no_computing):
    with pytest.raises(ConfigError) as error:
        engine_for(models_dir, plot=True).run(CONTENT, STYLE, tmp_path / "cat.png")
    message = str(error.value)
    assert "matplotlib" in message and ("[plot]" in message or "'plot'" in message) and "\n" not in message
    assert no_computing == [] and written(tmp_path) == []


def test_cli_plot_without_matplotlib_is_one_error_line(tmp_path, models_dir, hidden_matplotlib, no_computing):
    out = tmp_path / "out"
    line = error_line(stylize(models_dir, out / "cat.png", "--plot"))
    assert "matplotlib" in line and ("[plot]" in line or "'plot'" in line)   # names the 'plot' extra
    assert written(out) == []


# ---------------------------------------------------------------- every feature through the CLI


def test_cli_sheet_gif_plot_and_16_bit_png(tmp_path, models_dir):
    output = tmp_path / "cat.png"
    extra = ["--sheet", "--gif", "--bit-depth", "16"] + (["--plot"] if HAS_MATPLOTLIB else [])
    result = stylize(models_dir, output, *extra)
    assert result.exit_code == 0, result.output
    names = written(tmp_path)
    assert {"cat.png", "cat.json", "cat_sheet.png", "cat.gif"} <= set(names)
    assert ("cat_loss.png" in names) == HAS_MATPLOTLIB
    assert f"contact sheet {tmp_path / 'cat_sheet.png'}, progress GIF {tmp_path / 'cat.gif'}" in result.stderr
    assert (f"loss plot {tmp_path / 'cat_loss.png'}" in result.stderr) == HAS_MATPLOTLIB
    assert read_png16(output)[0]["bit_depth"] == 16
    with Image.open(tmp_path / "cat.gif") as gif:
        assert gif.n_frames == 2
    config = json.loads((tmp_path / "cat.json").read_text())["config"]
    assert (config["sheet"], config["gif"], config["plot"], config["bit_depth"]) == (True, True, HAS_MATPLOTLIB, 16)


def test_cli_options_reach_the_run_record(tmp_path, models_dir):
    """Every new option, given on the command line, is what the run used and recorded."""
    second = write_png(tmp_path / "pattern.png", periodic_texture(80, 60, period=8))
    start = write_png(tmp_path / "start.png", periodic_texture(40, 30, period=6))
    output = tmp_path / "out" / "cat.png"
    result = runner.invoke(app, [
        "stylize", str(CONTENT), "-o", str(output), "--style", f"{STYLE},{second}", "--style-blend", "3,1",
        "--init", str(start), "--preserve-colors", "histogram", "--style-scale", "0.5", "--size", "64",
        "--scales", "2", "--scale-iterations", "1,1", "--maxfun", "3", "--pooling", "avg",
        "--optimizer-mode", "continuous", "--tol", "1e-9", "--clip-pixels", "--style-normalization", "gatys",
        "--threads", "2", "--provider", "cpu", "--models-dir", str(models_dir)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(output)
    assert "scale 1/2" in result.stderr and "scale 2/2" in result.stderr
    record = json.loads((tmp_path / "out" / "cat.json").read_text())
    config = record["config"]
    assert config["style_blend"] == [3.0, 1.0] and config["init"] == str(start)
    assert config["preserve_colors"] == "histogram" and config["style_scale"] == 0.5
    assert config["scales"] == 2 and config["scale_iterations"] == [1, 1]
    assert config["pooling"] == "avg" and config["optimizer_mode"] == "continuous"
    assert config["tol"] == 1e-9 and config["clip_pixels"] is True
    assert config["style_normalization"] == "gatys"
    assert record["style"] == [str(STYLE), str(second)]
    assert record["scales"] == [[32, 16], [64, 48]]
    assert set(record["runtime"]["pool_scales"]) == {f"pool_scale.block{b}_pool" for b in range(1, 5)}
    assert len(record["iterations"]) == 2
    assert engine.TransferConfig(**config).style_blend == (3.0, 1.0)


# ---------------------------------------------------------------- conflicting options


BAD_OPTIONS = {
    "style-blend-count": (["--style", f"{STYLE},{CONTENT}", "--style-blend", "1,2,3"],
                          ["3 style blend weights", "2 style images"]),
    "scales-too-small-for-block5": (["--scales", "3"], ["scales", "16 px"]),
    "scale-iterations-count": (["--size", "64", "--scales", "2", "--scale-iterations", "1,2,3"],
                               ["3 scale iteration counts", "2 scales"]),
    "init-missing-file": (["--init", "no/such/start.png"], ["no/such/start.png"]),
    "style-scale-too-small": (["--style-scale", "0.01"], ["style_scale", "0.01"]),
    "style-scale-too-large": (["--style-scale", "20"], ["style_scale", "20"]),
    "tol-negative": (["--tol=-1e-3"], ["tol"]),
    "bit-depth-12": (["--bit-depth", "12"], ["bit_depth", "12"]),
    "bit-depth-16-jpeg": (["--bit-depth", "16", "-o", "{out}/cat.jpg"], ["16-bit", ".png"]),
    "style-argument-and-option": (["--style", str(STYLE)], ["style", "once"]),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_conflicting_options_are_one_error_line_before_any_computing(tmp_path, models_dir, no_computing, case):
    extra, fragments = BAD_OPTIONS[case]
    out = tmp_path / "out"
    extra = [arg.replace("{out}", str(out)) for arg in extra]
    # --style replaces the STYLE argument, except where giving both is the mistake.
    style = None if "--style" in extra and case != "style-argument-and-option" else STYLE
    result = stylize(models_dir, out / "cat.png", *extra, style=style)
    line = error_line(result)
    for fragment in fragments:
        assert fragment in line, line
    assert no_computing == []
    assert written(out) == []
