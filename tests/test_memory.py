"""A run that would not fit in memory is refused up front, naming a size that fits."""
import pytest

from engine import MemoryLimitError, TransferConfig
from engine.bench import estimate_eval_bytes
from engine.memory import ARENA_FACTOR, check_memory, run_bytes

GIB = 1024 ** 3


def test_run_estimate_grows_linearly_with_pixels_beyond_the_weights():
    cfg = TransferConfig()
    small, double = run_bytes(cfg, 512, 512), run_bytes(cfg, 1024, 512)
    triple = run_bytes(cfg, 1536, 512)
    assert triple - double == pytest.approx(double - small, rel=1e-6)
    assert run_bytes(cfg, 512, 512) > ARENA_FACTOR * estimate_eval_bytes(cfg, 512, 512)


def test_a_run_too_large_for_the_memory_is_refused_with_a_size_that_fits():
    cfg = TransferConfig()
    with pytest.raises(MemoryLimitError) as err:
        check_memory(cfg, 4096, 4096, available=8 * GIB)
    side = int(str(err.value).split("a ")[-1].split(" px square")[0])
    assert run_bytes(cfg, side, side) <= 8 * GIB < run_bytes(cfg, side + 16, side + 16)
    assert "4096x4096" in str(err.value) and "\n" not in str(err.value)


def test_a_run_that_fits_is_not_refused():
    check_memory(TransferConfig(), 512, 512, available=8 * GIB)
