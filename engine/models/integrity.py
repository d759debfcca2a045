"""Is an exported feature graph still what `nst export` wrote? Its layers and its weights checksum.

The layers check is cheap and runs on every read. The checksum (sha256 of every conv
weight, ~60 MB for VGG16) is computed the first time a file is used; the verdict is
kept in a small JSON file in the user cache, keyed by the model's path, size and
modification time, so it costs once per file version. The verdict keeps the model's
metadata too: while the file is unchanged, finding its cached graphs needs no read of it.
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import numpy_helper

from . import vgg
from ..errors import EngineError, ModelFileError
from ..io.files import atomic_write_text
from .store import cache_dir
from .weights import weights_sha256



def _redo(path: Path) -> str:
    """What to run to write the model at ``path`` (``<arch>.onnx``) again, where it is."""
    return f"run `nst export {path.stem} --models-dir {path.parent}` again"


def verdicts_path() -> Path:
    return cache_dir() / "verified-models.json"


def check_layers(path: Path, model: onnx.ModelProto, meta: dict[str, str]) -> None:
    """ModelFileError unless the graph has every conv layer (weights and output) its metadata promises."""
    arch = meta.get("architecture", "")
    try:
        promised = json.loads(meta["layers"]) if "layers" in meta else list(vgg.conv_layer_names(arch))
        expected = list(vgg.conv_layer_names(arch))
    except (ValueError, TypeError, EngineError) as exc:
        raise ModelFileError(f"{path} has unreadable metadata ({exc}): {_redo(path)}") from None
    outputs = {o.name for o in model.graph.output}
    weights = {t.name for t in model.graph.initializer}
    missing = [name for name in dict.fromkeys([*promised, *expected])
               if name not in outputs or f"{name}/kernel" not in weights or f"{name}/bias" not in weights]
    if missing:
        raise ModelFileError(f"{path} lacks the {arch} layer(s) {', '.join(missing)} its metadata promises: "
                             f"{_redo(path)}")


def graph_weights_sha256(model: onnx.ModelProto, arch: str) -> str:
    """The checksum `nst export` records, computed from the graph's own conv weights."""
    tensors = {t.name: t for t in model.graph.initializer}
    layers = {name: (numpy_helper.to_array(tensors[f"{name}/kernel"]), numpy_helper.to_array(tensors[f"{name}/bias"]))
              for name in vgg.conv_layer_names(arch)}
    return weights_sha256(arch, layers)


def verify_weights(path: Path, model: onnx.ModelProto, meta: dict[str, str]) -> None:
    """ModelFileError when the weights differ from the checksum in the metadata (cached verdict)."""
    if verified_metadata(path) == meta:
        return
    if graph_weights_sha256(model, meta["architecture"]) != meta["weights_sha256"]:
        raise ModelFileError(f"{path}: its weights changed since export (their checksum differs from the one "
                             f"recorded in the model): {_redo(path)}")
    key, stamp = _key(path)
    # Forget files that are gone (test folders, old checkouts) so the file stays small.
    verdicts = {path: seen for path, seen in _read_verdicts().items() if Path(path).exists()}
    verdicts[key] = {"stamp": stamp, "metadata": meta}
    _write_verdicts(verdicts)


def verified_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of ``path`` when, as it is now (same size and modification time), its
    layers and weights were verified; else None."""
    key, stamp = _key(path)
    verdict = _read_verdicts().get(key)
    meta = verdict.get("metadata") if isinstance(verdict, dict) and verdict.get("stamp") == stamp else None
    # A verdict from an older engine, or an edited cache, lacks what the graphs' key needs: verify again.
    return meta if isinstance(meta, dict) and {"architecture", "weights_sha256"} <= meta.keys() else None


def verified(path: Path) -> bool:
    """Whether ``path``, as it is now, has a cached verdict of matching weights."""
    return verified_metadata(path) is not None


def _key(path: Path) -> tuple[str, list]:
    stat = path.stat()
    return str(path.resolve()), [stat.st_size, stat.st_mtime_ns]


def _read_verdicts() -> dict:
    try:
        verdicts = json.loads(verdicts_path().read_text())
    except (OSError, ValueError):  # absent or damaged: verify again
        return {}
    return verdicts if isinstance(verdicts, dict) else {}


def _write_verdicts(verdicts: dict) -> None:
    # Best effort: a cache that cannot be written only means the check runs again next time.
    try:
        atomic_write_text(verdicts_path(), json.dumps(verdicts, indent=1) + "\n")
    except OSError:
        pass
