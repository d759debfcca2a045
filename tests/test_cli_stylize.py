"""``nst stylize`` and ``nst info``: results, presets, and one clear error line for bad input.

Every failing case must exit non-zero with exactly one ``error:`` line on stderr,
no traceback, and no output, record or snapshot written.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import engine.models.store
import engine.run.engine
from conftest import error_line, written
from engine.cli import app
from engine.runtime.sessions import cuda_device_present

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / "examples" / "content.jpg"
STYLE = ROOT / "examples" / "style.jpg"

runner = CliRunner()


@pytest.fixture(scope="module")
def models_dir(vgg16_onnx) -> Path:
    return vgg16_onnx.parent


def stylize(models_dir, output, *extra, content=CONTENT, style=STYLE):
    args = ["stylize", str(content), str(style), "-o", str(output), "--size", "32", "--iterations", "2",
            "--maxfun", "3", "--threads", "2", "--provider", "cpu", *extra]
    if models_dir is not None:
        args += ["--models-dir", str(models_dir)]
    return runner.invoke(app, args)




@pytest.fixture
def out_dir(tmp_path) -> Path:
    return tmp_path / "out"


# ---------------------------------------------------------------- success


def test_stylize_prints_the_output_path_and_writes_image_snapshots_and_record(models_dir, out_dir):
    output = out_dir / "cat.png"
    result = stylize(models_dir, output)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(output)
    assert written(out_dir) == ["cat.json", "cat.png", "cat_at_iteration_1.png", "cat_at_iteration_2.png"]
    with Image.open(output) as image:
        assert image.size == (32, 21)
    record = json.loads((out_dir / "cat.json").read_text())
    assert record["status"] == "finished" and len(record["iterations"]) == 2
    assert "iteration 2" in result.stderr


def test_stylize_quiet_prints_only_the_path(models_dir, out_dir):
    output = out_dir / "cat.jpg"
    result = stylize(models_dir, output, "--quiet", "--save-every", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(output)
    assert result.stderr.strip() == ""
    assert written(out_dir) == ["cat.jpg", "cat.json"]


def test_stylize_preset_sets_the_seeds_weights_and_flags_override_it(models_dir, out_dir):
    output = out_dir / "starry.png"
    result = runner.invoke(app, ["stylize", str(CONTENT), str(STYLE), "-o", str(output),
                                 "--preset", "starry_tubingen", "--iterations", "1", "--maxfun", "3",
                                 "--size", "32", "--threads", "2", "--provider", "cpu",
                                 "--models-dir", str(models_dir)])
    assert result.exit_code == 0, result.output
    config = json.loads((out_dir / "starry.json").read_text())["config"]
    # The seed's "Starry night + Tubingen" cell.
    assert config["content_weight"] == 100
    assert config["style_weights"] == [1000, 100, 12, 1, 1]
    assert config["tv_weight"] == 200
    assert config["content_layer"] == "block4_conv2"
    assert config["style_layers"] == ["block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1",
                                      "block5_conv1"]
    assert config["convnet"] == "vgg16"
    assert config["iterations"] == 1   # the flag beats the preset's 50
    assert written(out_dir) == ["starry.json", "starry.png", "starry_at_iteration_1.png"]


# ---------------------------------------------------------------- bad input


def _truncated_png(folder: Path) -> Path:
    path = folder / "truncated.png"
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _text_file(folder: Path) -> Path:
    path = folder / "photo.jpg"
    path.write_text("this is not a photo\n")
    return path


def _folder(folder: Path) -> Path:
    path = folder / "images.png"
    path.mkdir()
    return path


BAD_CONTENT = {
    "missing": (lambda folder: folder / "nope.jpg", ["nope.jpg", "no such file"]),
    "directory": (_folder, ["images.png", "folder"]),
    "text-file": (_text_file, ["photo.jpg", "not an image"]),
    "truncated-png": (_truncated_png, ["truncated.png", "truncated"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENT))
def test_bad_content_image_is_one_error_line(tmp_path, models_dir, out_dir, case):
    make, fragments = BAD_CONTENT[case]
    bad = make(tmp_path)
    line = error_line(stylize(models_dir, out_dir / "x.png", content=bad))
    for fragment in fragments:
        assert fragment in line
    assert written(out_dir) == []


def test_bad_style_image_is_one_error_line(tmp_path, models_dir, out_dir):
    line = error_line(stylize(models_dir, out_dir / "x.png", style=_truncated_png(tmp_path)))
    assert "truncated.png" in line
    assert written(out_dir) == []


BAD_SETTINGS = {
    "unknown-content-layer": (["--content-layer", "block9_conv1"],
                              ["block9_conv1", "block1_conv1", "block5_conv3"]),
    "unknown-style-layer": (["--style-layers", "block1_conv1,block1_pool"], ["block1_pool", "block4_conv2"]),
    "style-weights-count": (["--style-weights", "1,2"], ["2 style_weights", "5 style_layers"]),
    "negative-content-weight": (["--content-weight=-1"], ["content_weight", "-1"]),
    "negative-style-weight": (["--style-weights=1,1,-5,1,1"], ["style_weights", "-5"]),
    "nan-tv-weight": (["--tv-weight", "nan"], ["tv_weight", "nan"]),
    "inf-content-weight": (["--content-weight", "inf"], ["content_weight"]),
    "zero-iterations": (["--iterations", "0"], ["iterations", "at least 1"]),
    "zero-maxfun": (["--maxfun", "0"], ["maxfun", "at least 1"]),
    "too-small-for-block5": (["--size", "8", "--style-layers", "block1_conv1,block5_conv1",
                              "--style-weights", "1,1"], ["size", "16"]),
    "unknown-preset": (["--preset", "mona_lisa"], ["mona_lisa", "starry_tubingen"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_are_one_error_line(models_dir, out_dir, case):
    extra, fragments = BAD_SETTINGS[case]
    line = error_line(stylize(models_dir, out_dir / "x.png", *extra))
    for fragment in fragments:
        assert fragment in line, line
    assert written(out_dir) == []


def test_unwritable_output_folder_is_reported_before_any_computing(tmp_path, models_dir, monkeypatch):
    prepared = []
    monkeypatch.setattr(engine.run.engine.Engine, "prepare",
                        lambda self, *args, **kwargs: prepared.append(args) or pytest.fail("computed"))
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    line = error_line(stylize(models_dir, blocker / "out" / "cat.png"))
    assert "notes.txt" in line and "not a folder" in line
    assert prepared == []
    assert blocker.read_text() == "a file, not a folder"


def test_unknown_output_suffix_is_one_error_line(models_dir, out_dir):
    line = error_line(stylize(models_dir, out_dir / "cat.xyz"))
    assert ".xyz" in line and ".png" in line
    assert written(out_dir) == []


@pytest.fixture
def no_models_anywhere(tmp_path, monkeypatch) -> Path:
    """Empty models folder, $NST_MODELS_DIR and cache; the checkout's exported_models/ hidden."""
    empty = tmp_path / "empty-models"
    empty.mkdir()
    monkeypatch.setenv("NST_MODELS_DIR", str(tmp_path / "env-models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(engine.models.store, "MANIFEST", tmp_path / "no-manifest.json")
    return empty


def test_missing_model_says_the_export_command(no_models_anywhere, out_dir):
    line = error_line(stylize(no_models_anywhere, out_dir / "x.png"))
    assert "vgg16.onnx" in line and "nst export" in line
    assert str(no_models_anywhere) in line
    assert written(out_dir) == []


def test_missing_vgg19_model_says_the_export_command(no_models_anywhere, out_dir):
    line = error_line(stylize(no_models_anywhere, out_dir / "x.png", "--convnet", "vgg19"))
    assert "vgg19.onnx" in line and "nst export vgg19`" in line


def test_damaged_model_or_cached_graph_is_one_error_line_naming_the_file(models_dir, tmp_path, out_dir):
    import shutil

    mine = tmp_path / "models"
    mine.mkdir()
    model = mine / "vgg16.onnx"
    model.write_bytes((models_dir / "vgg16.onnx").read_bytes()[:100_000])  # a cut-off download or copy
    line = error_line(stylize(mine, out_dir / "x.png"))
    assert str(model) in line and "not a readable ONNX model" in line and "nst export" in line
    assert written(out_dir) == []

    from engine.graph.builder import GraphBuilder

    b = GraphBuilder()  # a valid ONNX model, but not a feature graph of ours
    b.output("y", b.op("Relu", b.input("x", [1])), [1])
    model.write_bytes(b.model("other").SerializeToString())
    line = error_line(stylize(mine, out_dir / "x.png"))
    assert "not a feature graph written by `nst export`" in line
    assert written(out_dir) == []

    shutil.copyfile(models_dir / "vgg16.onnx", model)
    assert stylize(mine, out_dir / "x.png").exit_code == 0
    loss_graph = next((mine / "graphs").glob("*-loss.onnx"))
    loss_graph.write_bytes(b"not a graph")
    line = error_line(stylize(mine, out_dir / "y.png"))
    assert str(loss_graph) in line and "delete the file and run again" in line
    assert not [name for name in written(out_dir) if name.startswith("y")]


@pytest.mark.skipif(cuda_device_present(), reason="this machine has a GPU: CUDA may start")
def test_provider_cuda_without_a_gpu_is_one_error_line(models_dir, out_dir):
    result = stylize(models_dir, out_dir / "x.png")
    assert result.exit_code == 0, result.output   # the same run works on the CPU
    args = ["stylize", str(CONTENT), str(STYLE), "-o", str(out_dir / "y.png"), "--size", "32",
            "--iterations", "1", "--maxfun", "2", "--provider", "cuda", "--models-dir", str(models_dir)]
    result = runner.invoke(app, args)
    line = error_line(result)
    assert "CUDA" in line and "--provider cpu" in line
    assert result.stdout == ""   # stdout is for the result's path; no library noise there
    assert not (out_dir / "y.png").exists() and not (out_dir / "y.json").exists()


def test_style_given_twice_is_one_error_line(models_dir, out_dir):
    line = error_line(stylize(models_dir, out_dir / "x.png", "--style", str(STYLE)))
    assert "style" in line
    assert written(out_dir) == []


# ---------------------------------------------------------------- info


def test_info_shows_providers_and_the_one_a_session_gets(models_dir):
    result = runner.invoke(app, ["info", "--models-dir", str(models_dir)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "CPUExecutionProvider" in out
    # Only labelled lines (and the indented model list): no library loader noise.
    labels = ("engine", "onnxruntime", "onnx", "numpy", "scipy", "python", "providers", "session gets",
              "cuda", "models:")
    for line in out.splitlines():
        assert line.startswith(labels) or line.startswith(" "), line
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "onnxruntime" in lines and "providers" in lines
    session_line = next(line for line in out.splitlines() if line.startswith("session gets"))
    assert "ExecutionProvider" in session_line
    if not cuda_device_present():   # no GPU: a session really gets the CPU, and CUDA is said not usable
        assert "CPUExecutionProvider" in session_line and "CUDA" not in session_line
        assert any(line.startswith("cuda") and "not usable" in line for line in out.splitlines())
    assert "vgg16.onnx" in out and str(models_dir) in out


def test_info_lists_a_damaged_model_as_unusable_and_goes_on(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    result = runner.invoke(app, ["info", "--models-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    line = next(line for line in result.stdout.splitlines() if "broken.onnx" in line)
    assert "unusable" in line and "not a readable ONNX model" in line
