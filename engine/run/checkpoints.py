"""Per-iteration checkpoints: the pixels of the last finished iteration at full precision.

A checkpoint is one ``.npz`` (written atomically after every iteration) holding x as
float64 in the seed's convention and a JSON header: the run's fingerprint (config,
checksums of the content, style and init files, model weights), where the run stands
(scale, iterations done in it, whether that scale is complete), the loss scale that
L-BFGS-B saw, and the iteration records so far. Resuming from it continues exactly
where the run stood: in the seed's optimizer mode (a fresh L-BFGS-B per iteration) the
resumed run ends with the same pixels as an uninterrupted one; in continuous mode the
L-BFGS-B history starts again, so only the iteration count is the same.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import TransferConfig
from ..errors import RunError
from ..io.files import atomic_write_bytes, file_sha256
from .events import IterationDone

VERSION = 1


@dataclass
class Checkpoint:
    x: np.ndarray                      # float64 (1, 3, H, W), seed's convention
    scale: int                         # 0-based index of the scale x belongs to
    done: int                          # iterations finished at that scale
    complete: bool                     # the scale's optimisation ended (its last iteration or a stop by tol)
    loss_scale: float                  # what L-BFGS-B's losses were multiplied by at that scale
    evaluations: int                   # evaluations of the whole run so far
    iterations: list[IterationDone] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0


def fingerprint(config: TransferConfig, content, styles: list, weights_sha256: str | None) -> dict:
    """What must not change between a run and its resumption."""
    init = config.init_file
    return {"config": config.to_dict(), "content": _checksum(content), "styles": [_checksum(s) for s in styles],
            "init": _checksum(init) if init else None, "weights_sha256": weights_sha256}


def _checksum(source) -> str:
    digest = hashlib.sha256()
    if isinstance(source, Image.Image):
        digest.update(f"{source.mode}{source.size}".encode())
        digest.update(source.tobytes())
        return digest.hexdigest()
    return file_sha256(source)


def save(path: Path, checkpoint: Checkpoint, print_: dict) -> None:
    """Write ``checkpoint`` atomically (a RunError line when it cannot be, the previous one kept)."""
    header = {"version": VERSION, "fingerprint": print_, "scale": checkpoint.scale, "done": checkpoint.done,
              "complete": checkpoint.complete, "loss_scale": checkpoint.loss_scale,
              "evaluations": checkpoint.evaluations, "iterations": [it.record() for it in checkpoint.iterations],
              "files": checkpoint.files, "seconds": checkpoint.seconds}
    buffer = io.BytesIO()
    np.savez(buffer, x=np.asarray(checkpoint.x, np.float64), header=np.array(json.dumps(header)))
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise RunError(f"cannot write the checkpoint {path}: {exc.strerror or exc}") from None


def last_iteration(path: Path) -> int:
    """The last finished iteration the checkpoint at ``path`` holds (0: none, or none readable)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            iterations = json.loads(str(data["header"]))["iterations"]
        return int(iterations[-1]["iteration"]) if iterations else 0
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile, EOFError):
        return 0


def load(path: Path, print_: dict) -> Checkpoint:
    """The checkpoint at ``path``; RunError when it is missing, damaged, or of another run."""
    if not path.is_file():
        raise RunError(f"nothing to resume: no checkpoint {path}; run again without --resume to start over")
    try:
        with np.load(path, allow_pickle=False) as data:
            x, header = np.array(data["x"], np.float64), json.loads(str(data["header"]))
        iterations = [IterationDone.from_record(r) for r in header["iterations"]]
        checkpoint = Checkpoint(x, header["scale"], header["done"], header["complete"], header["loss_scale"],
                                header["evaluations"], iterations, header["files"], header["seconds"])
        theirs = header["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError):
        raise RunError(f"cannot resume: the checkpoint {path} is damaged; run again without --resume "
                       "to start over") from None
    if x.ndim != 4 or not np.isfinite(x).all():
        raise RunError(f"cannot resume: the checkpoint {path} is damaged; run again without --resume to start over")
    for key, what in (("content", "content image"), ("styles", "style image(s)"), ("init", "init image"),
                      ("weights_sha256", "model weights")):
        if theirs.get(key) != print_[key]:
            raise RunError(f"cannot resume from {path}: the {what} changed since that run; "
                           "give the same files, or run without --resume to start over")
    if theirs.get("config") != print_["config"]:
        changed = sorted(k for k in set(theirs["config"]) | set(print_["config"])
                         if theirs["config"].get(k) != print_["config"].get(k))
        raise RunError(f"cannot resume from {path}: the settings changed since that run ({', '.join(changed)}); "
                       "give the same options, or run without --resume to start over")
    return checkpoint
