"""What a run tells its caller while it works: typed events passed to one callback."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union


@dataclass(frozen=True)
class Prepared:
    """Targets are computed and the loss-gradient session is ready (once per scale)."""
    width: int
    height: int
    provider: str
    seconds: float
    scale: int = 1
    scales: int = 1


@dataclass(frozen=True)
class Evaluated:
    """One loss-and-gradient evaluation finished."""
    evaluation: int
    total_evaluations: int
    loss: float


@dataclass(frozen=True)
class IterationDone:
    """One iteration finished (one fmin_l_bfgs_b call, or maxfun evaluations in continuous mode).

    Loss terms are the true, weighted ones; ``snapshot`` is None when none was saved.
    """
    iteration: int
    loss: float
    content: float
    style: float
    tv: float
    evaluations: int
    seconds: float
    snapshot: Path | None
    width: int = 0
    height: int = 0

    def record(self) -> dict:
        return {"iteration": self.iteration, "loss": self.loss, "content": self.content,
                "style": self.style, "tv": self.tv, "evaluations": self.evaluations,
                "seconds": round(self.seconds, 4), "size": [self.width, self.height],
                "snapshot": str(self.snapshot) if self.snapshot else None}

    @classmethod
    def from_record(cls, record: dict) -> IterationDone:
        snapshot = Path(record["snapshot"]) if record.get("snapshot") else None
        return cls(record["iteration"], record["loss"], record["content"], record["style"], record["tv"],
                   record["evaluations"], record["seconds"], snapshot, *record["size"])


Event = Union[Prepared, Evaluated, IterationDone]
Callback = Callable[[Event], None]
