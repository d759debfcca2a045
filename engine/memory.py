"""Refusing a run that would not fit in memory, before it starts instead of being killed.

The per-evaluation estimate (tensor bytes, linear in pixels) lives with the benchmark
that checks it against measured peak RSS; ONNX Runtime's CPU arena keeps about
``ARENA_FACTOR`` times the live tensor bytes (benchmarks/results: 6.0 KB/px measured
against 2.1 KB/px of live tensors).
"""
from __future__ import annotations

from .bench import GIB, estimate_eval_bytes, estimate_optimizer_bytes, largest_square, meminfo_bytes
from .config import TransferConfig
from .errors import MemoryLimitError

ARENA_FACTOR = 3.0


def run_bytes(config: TransferConfig, width: int, height: int) -> float:
    """Estimated peak memory of a run at a (width, height) working size, in bytes."""
    return ARENA_FACTOR * estimate_eval_bytes(config, width, height) + estimate_optimizer_bytes(width, height)


def available_bytes() -> int | None:
    """MemAvailable; None where it cannot be read (then nothing is refused)."""
    return meminfo_bytes("MemAvailable")


def check_memory(config: TransferConfig, width: int, height: int, available: int | None = None) -> None:
    available = available if available is not None else available_bytes()
    if available is None:
        return
    need = run_bytes(config, width, height)
    if need > available:
        side = largest_square(lambda w, h: run_bytes(config, w, h), available, config.size_multiple())
        raise MemoryLimitError(
            f"a {width}x{height} px run needs about {need / GIB:.1f} GiB but {available / GIB:.1f} GiB "
            f"are available: use a smaller --size (a {side} px square fits)")
