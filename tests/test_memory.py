"""The memory estimate (forward maps, tensors alive at the peak, the optimiser's state),
and a run that would not fit in memory refused up front, naming a size that fits."""
import pytest

from engine import MemoryLimitError, TransferConfig, preset_config
from engine.runtime.memory import (ARENA_FACTOR, FLOAT32, GIB, check_memory, estimate_eval_bytes,
                                   estimate_optimizer_bytes, eval_memory_breakdown, forward_maps, largest_square,
                                   run_bytes, targets_bytes)


def test_forward_maps_halve_at_each_pool():
    maps = forward_maps(preset_config("starry_tubingen"), 64, 48)
    pools = [m for m in maps if m.kind == "pool"]
    assert [p.name for p in pools] == ["block1_pool", "block2_pool", "block3_pool", "block4_pool"]
    assert (pools[-1].height, pools[-1].width) == (3, 4)
    assert maps[-1].name == "block5_conv1" and maps[-1].channels == 512


@pytest.mark.parametrize("preset", ["starry_tubingen", "pavlos_grandma_woman_with_hat"])
def test_memory_estimate_is_linear_in_pixels(preset):
    config = preset_config(preset)
    fixed = eval_memory_breakdown(config, 16, 16)["weights"]
    assert fixed == eval_memory_breakdown(config, 1024, 512)["weights"]
    per_pixel = {(w, h): (estimate_eval_bytes(config, w, h) - fixed) / (w * h)
                 for w, h in [(16, 16), (64, 32), (256, 176), (512, 336), (2048, 2048)]}
    assert len(set(per_pixel.values())) == 1, per_pixel
    # At least every kept ReLU output of the full-resolution block (2 x 64 float32 per pixel).
    assert next(iter(per_pixel.values())) > 2 * 64 * 4


def test_optimizer_state_is_linear_in_pixels():
    a, b, c = (estimate_optimizer_bytes(s, s) for s in (32, 64, 96))
    assert (b - a) / (64 * 64 - 32 * 32) == pytest.approx((c - b) / (96 * 96 - 64 * 64))
    # L-BFGS-B with 10 corrections: 2*10 + 5 doubles per variable in its work array, 3 variables a pixel.
    assert (b - a) / (64 * 64 - 32 * 32) >= 3 * 8 * 25


def test_largest_square():
    assert largest_square(lambda w, h: 100 + w * h, 100 + 64 * 64, 16) == 64
    assert largest_square(lambda w, h: 100 + w * h, 100 + 64 * 64 - 1, 16) == 48
    assert largest_square(lambda w, h: 100 + w * h, 10, 16) == 0


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


def test_a_style_image_too_large_for_its_targets_is_refused_before_the_run():
    """--style-scale 8 at 1024 px: an 8192x6528 style image, ~32 GiB for its block-1 maps alone."""
    cfg = TransferConfig(size=1024, style_scale=8.0)
    check_memory(cfg, 1024, 816, available=8 * GIB)   # the run itself fits
    with pytest.raises(MemoryLimitError) as err:
        check_memory(cfg, 1024, 816, available=8 * GIB, style_sizes=((8192, 6528),))
    message = str(err.value)
    assert message.startswith("the style image at 8192x6528 px needs about") and "--style-scale" in message
    assert targets_bytes(cfg, 8192, 6528) > 2.5 * FLOAT32 * 64 * 8192 * 6528   # its block1 maps
    check_memory(cfg, 1024, 816, available=8 * GIB, style_sizes=((1024, 816),))


def test_the_engine_checks_the_style_images_at_their_working_size(models_dir, monkeypatch):
    import engine.run.engine as run_engine
    from features_support import CONTENT, STYLE

    seen = []
    monkeypatch.setattr(run_engine, "check_memory", lambda *a, **k: seen.append(k["style_sizes"]) or (
        _ for _ in ()).throw(MemoryLimitError("stop here")))
    with pytest.raises(MemoryLimitError):
        run_engine.Engine(models_dir, provider="cpu").run(TransferConfig(size=64, style_scale=4.0), CONTENT, STYLE)
    (width, height), = seen[0]
    assert max(width, height) == 256   # 4 x the 64 px working size, the style image's proportions
