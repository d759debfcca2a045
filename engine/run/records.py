"""What a run leaves: its result, the names of its files, and its run record.

A record says only what happened: ``finished`` only once the final image is written,
``cancelled`` / ``interrupted`` / ``failed`` (with the error) otherwise, and it lists
exactly the files this run wrote (a resumed run: the files of every part of it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from ..errors import RunError
from ..io.files import atomic_write_text
from .events import IterationDone


class RunStatus(str, Enum):
    RUNNING = "running"        # the record a run writes as it starts: a killed run's says so
    FINISHED = "finished"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    FAILED = "failed"


@dataclass
class TransferResult:
    image: np.ndarray                  # uint8 (H, W, 3) RGB: the final image (cancelled: the last finished iteration's)
    output: Path | None                # the final image's file, None when none was written
    record: Path | None
    iterations: list[IterationDone] = field(default_factory=list)
    provider: str = ""
    seconds: float = 0.0
    status: str = RunStatus.FINISHED.value
    checkpoint: Path | None = None     # where --resume / resume=True continues from (None once finished)
    visuals: dict[str, Path] = field(default_factory=dict)  # kind (sheet, gif, plot, tiled) -> file written
    planned_iterations: int = 0        # over all scales; a finished run has fewer when its tol stopped it early


def snapshot_path(output: Path, iteration: int) -> Path:
    """The seed's ``<output>_at_iteration_<N>.png``, next to the output."""
    return output.with_name(f"{output.stem}_at_iteration_{iteration}.png")


def record_path(output: Path) -> Path:
    return output.with_suffix(".json")


def checkpoint_path(output: Path) -> Path:
    """The pixels of the last finished iteration at full precision, for resuming."""
    return output.with_name(f"{output.stem}_checkpoint.npz")


def visual_paths(output: Path) -> dict[str, Path]:
    """The optional visual records: contact sheet, GIF, loss curve, 2x2 tile preview."""
    return {"sheet": output.with_name(f"{output.stem}_sheet.png"), "gif": output.with_name(f"{output.stem}.gif"),
            "plot": output.with_name(f"{output.stem}_loss.png"), "tiled": output.with_name(f"{output.stem}_tiled.png")}


def read_record(path: Path) -> dict:
    """The run record at ``path`` ({} when there is none, or none readable)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(path: Path, record: dict) -> None:
    """Write the record atomically; a failed write is one RunError line (no partial file)."""
    try:
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        raise RunError(f"cannot write the run record {path}: {exc.strerror or exc}") from None
