"""Command-line conventions: the seed's output prefix, style files with commas, model integrity in
`nst info`, and large photos decoded cheaply and quietly."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import engine.models.integrity as integrity
from engine.cli import app
from engine.errors import ImageError
from engine.io.images import load_image
from engine.models.export import read_feature_model

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / "examples" / "content.jpg"
STYLE = ROOT / "examples" / "style.jpg"
runner = CliRunner()
QUICK = ["--size", "32", "--iterations", "1", "--maxfun", "2", "--threads", "2", "--provider", "cpu"]


def test_an_output_without_suffix_is_the_seeds_prefix_and_a_style_name_may_hold_a_comma(vgg16_onnx, tmp_path):
    style = tmp_path / "starry, 1889.jpg"
    shutil.copy(STYLE, style)
    result = runner.invoke(app, ["stylize", str(CONTENT), str(style), "-o", str(tmp_path / "out" / "cat"), *QUICK,
                                 "--models-dir", str(vgg16_onnx.parent)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cat.json", "cat.png", "cat_at_iteration_1.png"]
    assert result.stdout.strip() == str(tmp_path / "out" / "cat.png")
    record = json.loads((tmp_path / "out" / "cat.json").read_text())
    assert record["style"] == str(style)
    assert "wrote image" in result.stderr and "record" in result.stderr


def test_style_repeated_gives_several_files_whatever_their_names(vgg16_onnx, tmp_path):
    odd = tmp_path / "wave, hokusai.jpg"
    shutil.copy(STYLE, odd)
    output = tmp_path / "out" / "cat.png"
    result = runner.invoke(app, ["stylize", str(CONTENT), "-s", str(STYLE), "--style", str(odd),
                                 "--style-blend", "0.7,0.3", "-o", str(output), *QUICK, "--save-every", "0",
                                 "--models-dir", str(vgg16_onnx.parent)])
    assert result.exit_code == 0, result.output
    assert json.loads(output.with_suffix(".json").read_text())["style"] == [str(STYLE), str(odd)]


def test_info_says_each_model_verified_and_never_to_run_itself(vgg16_onnx):
    result = runner.invoke(app, ["info", "--models-dir", str(vgg16_onnx.parent)])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if "vgg16.onnx" in line)
    assert "verified" in line and "weights match the checksum" in line
    assert "nst info" not in result.stdout
    assert [line.strip() for line in result.stdout.splitlines() if line.startswith("  /")] == [str(vgg16_onnx.parent)]


def test_the_weights_checksum_is_computed_once_per_file_version(vgg16_onnx, tmp_path, monkeypatch):
    model = tmp_path / "vgg16.onnx"
    shutil.copy(vgg16_onnx, model)
    real, calls = integrity.graph_weights_sha256, []
    monkeypatch.setattr(integrity, "graph_weights_sha256", lambda *a: calls.append(1) or real(*a))
    assert not integrity.verified(model)
    read_feature_model(model)
    read_feature_model(model)
    assert len(calls) == 1 and integrity.verified(model)
    model.touch()  # a new modification time: verified again
    read_feature_model(model)
    assert len(calls) == 2
    # A verdict without the metadata the graphs' key needs (an older engine's, an edited cache): verified again.
    verdicts = json.loads(integrity.verdicts_path().read_text())
    verdicts[str(model.resolve())]["metadata"] = {}
    integrity.verdicts_path().write_text(json.dumps(verdicts))
    assert not integrity.verified(model)
    read_feature_model(model)
    assert len(calls) == 3 and integrity.verified(model)


@pytest.fixture(scope="module")
def photo_90mp(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "90mp.jpg"
    Image.linear_gradient("L").resize((10000, 9000)).save(path, quality=50)
    return path


def test_a_90_megapixel_jpeg_loads_quietly_and_reduced_while_decoding(photo_90mp):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning included
        image = load_image(photo_90mp, fit=512)
    # decoded at 1/8 scale (1250x1125, both >= 2 * 512), not as 90 MP
    assert image.size == (1250, 1125) and image.mode == "RGB"


def test_beyond_the_pixel_limit_is_one_line_naming_the_option(photo_90mp):
    with pytest.raises(ImageError, match=r"10000x9000 px is 90 megapixels, more than the limit of 50; "
                                         r"raise it with --max-megapixels"):
        load_image(photo_90mp, max_megapixels=50)


ORT_WARNING_SCRIPT = """
import os
import sys
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                          [numpy_helper.from_array(np.zeros(3, np.float32), "unused")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()

def stderr_of(open_session, path):
    saved = os.dup(2)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 2)
        open_session()
    os.dup2(saved, 2)
    return open(path).read()

plain = stderr_of(lambda: ort.InferenceSession(model, providers=["CPUExecutionProvider"]), sys.argv[1] + ".plain")
from engine.runtime.sessions import create_session
engine = stderr_of(lambda: create_session(model, "cpu"), sys.argv[1] + ".engine")
print(repr(plain))
print(repr(engine))
"""


def test_onnx_runtimes_warnings_stay_off_stderr(tmp_path):
    # A graph with an unused initializer: plain ONNX Runtime warns on stderr (from C++: a child process
    # whose file descriptor 2 is read), the engine's sessions do not.
    out = subprocess.run([sys.executable, "-c", ORT_WARNING_SCRIPT, str(tmp_path / "stderr")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    plain, engine = out.stdout.splitlines()
    assert "Removing initializer 'unused'" in plain
    assert engine == "''"
