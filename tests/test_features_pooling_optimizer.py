"""Average pooling with pool scales, the robust L-BFGS-B drivers, and Gatys style normalisation.

With the real VGG16 at tiny sizes. Pool scales are recomputed here with NumPy from
the exported feature graph run directly in ONNX Runtime; losses and gradients come
from the float64 reference (tests/loss_reference.py); channel counts from the VGG paper.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import engine.run.optimize as optimize_module
import engine.run.engine as run_engine
import loss_reference as ref
from engine import Evaluated, IterationDone, StyleTransfer
from features_support import (CONTENT, MEAN_BGR, STYLE, VGG16_CHANNELS, caffe, capture_constants, engine_for,
                              record_evaluated_points, relative_l2, tiny_config)

# The pools before block5_conv1, the deepest of the default layers: blocks 1-4.
POOLS = [f"block{b}_pool" for b in range(1, 5)]
POOL_INPUTS = {"block1_pool": "block1_conv2", "block2_pool": "block2_conv2", "block3_pool": "block3_conv3",
               "block4_pool": "block4_conv3"}



# ---------------------------------------------------------------- average pooling


@pytest.fixture(scope="module")
def avg_run(tmp_path_factory, models_dir):
    folder = tmp_path_factory.mktemp("avg")
    transfer_ = engine_for(models_dir, pooling="avg", iterations=1, maxfun=2)
    result = transfer_.run(CONTENT, STYLE, folder / "cat.png")
    return folder, result, json.loads((folder / "cat.json").read_text())


@pytest.fixture(scope="module")
def numpy_pool_scales(vgg16_session) -> dict[str, float]:
    """mean(maxpool2x2(a)) / mean(a) for each pool's input a, on the content at the working size (32x16)."""
    names = [o.name for o in vgg16_session.get_outputs()]
    features = dict(zip(names, vgg16_session.run(None, {"image": caffe(CONTENT, (32, 16)).astype(np.float32)})))
    scales = {}
    for pool, layer in POOL_INPUTS.items():
        a = np.asarray(features[layer][0], np.float64)
        c, h, w = a.shape
        pooled = a.reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))
        scales[pool] = float(pooled.mean() / a.mean())
    return scales


@pytest.mark.parametrize("kind", ["style", "loss"])
def test_avg_pooling_graphs_use_average_pool_times_a_pool_scale_input(avg_run, kind):
    _, _, record = avg_run
    graph = onnx.load(record["graphs"][kind], load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    assert "MaxPool" not in ops
    pools = [node for node in graph.node if node.op_type == "AveragePool"]
    assert len(pools) == len(POOLS)
    inputs = {i.name for i in graph.input}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    scale_inputs = []
    for pool in pools:
        (mul,) = consumers[pool.output[0]]
        assert mul.op_type == "Mul"
        (scale,) = [name for name in mul.input if name != pool.output[0]]
        assert scale in inputs
        scale_inputs.append(scale)
    assert sorted(scale_inputs) == [f"pool_scale.{p}" for p in POOLS]


def test_avg_pool_scales_are_max_over_mean_of_each_pools_input_on_the_content(avg_run, numpy_pool_scales):
    _, _, record = avg_run
    recorded = record["runtime"]["pool_scales"]
    assert set(recorded) == {f"pool_scale.{p}" for p in POOLS}
    for pool, expected in numpy_pool_scales.items():
        assert expected > 1   # the max of four non-negative values beats their mean
        assert recorded[f"pool_scale.{pool}"] == pytest.approx(expected, rel=1e-4), pool
    assert record["config"]["pooling"] == "avg"


def test_avg_pooling_loss_and_gradient_match_the_reference_with_those_scales(models_dir, vgg16_layers,
                                                                             numpy_pool_scales):
    cfg = tiny_config(pooling="avg")
    problem = StyleTransfer(cfg, models_dir=models_dir, provider="cpu", threads=2).prepare(CONTENT, STYLE)
    x = np.random.default_rng(5).uniform(-128, 127, problem.shape)
    loss, grad = problem.loss_and_grad(x)
    content_target, grams = ref.targets(vgg16_layers, problem.content[0], problem.styles[0][0], cfg.content_layer,
                                        cfg.style_layers, "avg", numpy_pool_scales)
    terms, expected_grad = ref.loss_and_grad(vgg16_layers, x[0], content_target, grams, cfg.content_weight,
                                             cfg.style_weights, cfg.tv_weight, cfg.content_layer, cfg.style_layers,
                                             "avg", numpy_pool_scales)
    assert loss == pytest.approx(terms["loss"], rel=1e-4)
    assert relative_l2(grad[0], expected_grad) <= 1e-3


# ---------------------------------------------------------------- the optimiser


@pytest.fixture
def lbfgs_calls(monkeypatch) -> list[dict]:
    """Each fmin_l_bfgs_b call: its keyword options and every (value, ...) its objective returned."""
    calls = []
    real = optimize_module.fmin_l_bfgs_b

    def recording(func, x0, *args, **kwargs):
        call = {"kwargs": dict(kwargs), "values": [], "accepted": []}
        calls.append(call)

        def seen(x):
            value, grad = func(x)
            call["values"].append(value)
            return value, grad

        callback = kwargs.get("callback")
        if callback is not None:
            def accepted(xk):
                # L-BFGS-B calls back right after evaluating the point it accepts.
                call["accepted"].append(call["values"][-1])
                return callback(xk)

            kwargs["callback"] = accepted
        return real(seen, x0, *args, **kwargs)

    monkeypatch.setattr(optimize_module, "fmin_l_bfgs_b", recording)
    return calls


@pytest.fixture
def final_points(monkeypatch) -> list:
    """(problem, x) for each optimize call of a run: the image it ended with."""
    finals = []
    real = run_engine.optimize

    def recording(problem, *args, **kwargs):
        x = real(problem, *args, **kwargs)
        finals.append((problem, np.array(x, copy=True)))
        return x

    monkeypatch.setattr(run_engine, "optimize", recording)
    return finals


def test_lbfgs_sees_the_loss_scaled_to_one_while_events_carry_the_true_terms(
        tmp_path, models_dir, lbfgs_calls, final_points):
    events = []
    result = engine_for(models_dir, iterations=2, maxfun=3).run(CONTENT, STYLE, tmp_path / "cat.png",
                                                               callback=events.append)
    true_losses = [e.loss for e in events if isinstance(e, Evaluated)]
    seen = [v for call in lbfgs_calls for v in call["values"]]
    assert seen[0] == 1.0
    assert true_losses[0] > 1e10                 # the seed's magnitudes
    assert len(seen) == len(true_losses)
    # One constant factor, set by the first evaluation, for the whole run.
    np.testing.assert_allclose(np.array(seen) * true_losses[0], true_losses, rtol=1e-9)

    (problem, x), = final_points
    terms, _ = problem.evaluator(x)                # the graph's own outputs at the final image
    last = result.iterations[-1]
    assert last.loss == pytest.approx(terms["loss"], rel=1e-6)
    assert last.content == pytest.approx(terms["content"], rel=1e-6)
    assert last.tv == pytest.approx(terms["tv"], rel=1e-6)
    assert last.style == pytest.approx(sum(v for k, v in terms.items() if k.startswith("style.")), rel=1e-6)
    record = json.loads((tmp_path / "cat.json").read_text())
    assert [it["loss"] for it in record["iterations"]] == [it.loss for it in result.iterations]
    assert record["iterations"][-1]["loss"] > 1e10


# tv only, from noise: an easy problem (a smooth quadratic) that converges fast.
EASY = dict(content_weight=0.0, style_weights=(0.0,) * 5, tv_weight=1.0, iterations=5, maxfun=4)


def test_seed_mode_spends_at_least_maxfun_evaluations_every_iteration_without_tol(models_dir, lbfgs_calls):
    result = engine_for(models_dir, **EASY).run(CONTENT, STYLE)
    assert len(result.iterations) == 5
    assert [call["kwargs"]["maxfun"] for call in lbfgs_calls] == [4] * 5
    assert all(it.evaluations >= 4 for it in result.iterations)
    # Never stopped by scipy's own tests: factr and pgtol are 0.
    assert all(call["kwargs"]["factr"] == 0 and call["kwargs"]["pgtol"] == 0 for call in lbfgs_calls)


class NearlyFlat:
    """1e12 * (1 + 1e-9 * sum a_i (x_i - 1)^2), ill-conditioned: the loss moves by ~1e-8 relative
    per step, and the scaled gradient is far below scipy's default pgtol (1e-5)."""

    def __init__(self, n: int = 200):
        self.a = np.logspace(0, 4, n)
        self.evaluations = 0

    def loss_and_grad(self, x):
        self.evaluations += 1
        d = np.asarray(x, np.float64) - 1.0
        return 1e12 * (1 + 1e-9 * float(np.sum(self.a * d * d))), 1e12 * 1e-9 * 2 * self.a * d


def test_seed_mode_spends_maxfun_evaluations_every_iteration_even_when_the_loss_is_nearly_flat():
    from engine.config import OptimizerMode
    from scipy.optimize import fmin_l_bfgs_b

    flat = NearlyFlat()
    x0 = np.zeros(200)
    # scipy's defaults give up on it at once (relative reduction and gradient both "small")...
    scaled = lambda x: tuple(v / 1e12 for v in flat.loss_and_grad(x))  # noqa: E731
    _, _, info = fmin_l_bfgs_b(scaled, x0, maxfun=6)
    assert info["funcalls"] < 6 and info["warnflag"] == 0
    # ... the engine's driver does not.
    flat.evaluations = 0
    per_iteration = []
    x = optimize_module.optimize(flat, x0, 4, 6, OptimizerMode.SEED,
                                 lambda i, xk, used, seconds: per_iteration.append(used))
    assert len(per_iteration) == 4
    assert all(used >= 6 for used in per_iteration)
    assert flat.loss_and_grad(x)[0] < flat.loss_and_grad(x0)[0]


@pytest.mark.parametrize("mode", ["seed", "continuous"])
def test_lbfgs_runs_with_scipys_blas_on_one_thread_and_restores_it_after(mode):
    from threadpoolctl import threadpool_info

    from engine.config import OptimizerMode

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    before = blas_threads()
    seen: list[set[int]] = []

    class Recording(NearlyFlat):
        def loss_and_grad(self, x):
            seen.append(blas_threads())
            return super().loss_and_grad(x)

    optimize_module.optimize(Recording(), np.zeros(200), 2, 4, OptimizerMode(mode), lambda *a: None)
    assert seen and all(threads == {1} for threads in seen)
    assert blas_threads() == before


@pytest.mark.parametrize("mode", ["seed", "continuous"])
def test_tol_stops_once_an_iteration_lowers_the_loss_by_less_than_tol_of_it(models_dir, mode):
    # Content and a heavy tv from noise: converges fast towards a loss floor (> 0).
    tol, iterations, maxfun = 3e-2, 8, 10   # both drivers stop after 5-6 iterations
    settings = dict(content_weight=1.0, style_weights=(0.0,) * 5, tv_weight=1e3, iterations=iterations,
                    maxfun=maxfun, optimizer_mode=mode, init="noise")
    events = []
    result = engine_for(models_dir, **settings, tol=tol).run(CONTENT, STYLE, callback=events.append)
    assert 1 < len(result.iterations) < iterations == result.planned_iterations
    # Each iteration's drop relative to the loss it started from (the first from the first
    # evaluation); an iteration without evaluations of its own (a line search that overran
    # two marks) is measured together with the one before it.
    losses = [next(e.loss for e in events if isinstance(e, Evaluated))]
    losses += [it.loss for it in result.iterations if it.evaluations > 0]
    drops = [(before - after) / before for before, after in zip(losses, losses[1:])]
    assert drops[-1] <= tol < min(drops[:-1])
    # 0 runs every iteration, as None does.
    assert len(engine_for(models_dir, **settings, tol=0).run(CONTENT, STYLE).iterations) == iterations


def test_continuous_mode_is_one_lbfgs_run_reporting_an_iteration_per_maxfun_evaluations(models_dir, lbfgs_calls):
    events = []
    result = engine_for(models_dir, iterations=3, maxfun=4, optimizer_mode="continuous").run(
        CONTENT, STYLE, callback=events.append)
    evaluations = sum(isinstance(e, Evaluated) for e in events)
    assert len(lbfgs_calls) == 1 or all(len(call["values"]) < 12 for call in lbfgs_calls[:-1])
    assert 12 <= evaluations <= 12 + 4   # scipy checks maxfun only between its iterations
    done = [e for e in events if isinstance(e, IterationDone)]
    assert len(done) == 3 == len(result.iterations)
    assert sum(e.evaluations for e in done) == evaluations
    # An iteration is reported at the first accepted point past each maxfun evaluations.
    marks = np.cumsum([e.evaluations for e in done])
    assert all(marks[k] >= 4 * (k + 1) for k in range(3))


def test_clip_pixels_keeps_every_evaluated_image_within_0_255(models_dir, monkeypatch):
    points = record_evaluated_points(monkeypatch)
    engine_for(models_dir, iterations=2, maxfun=4, clip_pixels=True).run(CONTENT, STYLE)
    low, high = -MEAN_BGR[:, None], 255.0 - MEAN_BGR[:, None]
    for x in points:
        planes = x.reshape(3, -1)
        assert np.all(planes >= low - 1e-9) and np.all(planes <= high + 1e-9)

    points.clear()
    engine_for(models_dir, iterations=1, maxfun=2, clip_pixels=False).run(CONTENT, STYLE)
    # Without it the seed's noise start already lies outside (below 0 in blue).
    assert np.any(points[0].reshape(3, -1) < low - 1)


# ---------------------------------------------------------------- style normalisation


def test_gatys_normalisation_multiplies_each_style_coefficient_by_1e3_over_channels_squared(models_dir, monkeypatch):
    captured = capture_constants(monkeypatch)
    raw_problem = engine_for(models_dir, style_normalization="raw").prepare(CONTENT, STYLE)
    engine_for(models_dir, style_normalization="gatys").prepare(CONTENT, STYLE)
    raw, gatys = captured
    cfg = tiny_config()
    height, width = raw_problem.shape[2:]
    for layer, weight in zip(cfg.style_layers, cfg.style_weights):
        block = int(layer[len("block")])
        channels = VGG16_CHANNELS[block]
        down = 2 ** (block - 1)
        expected_raw = ref.style_coefficient(weight, len(cfg.style_layers), (height // down, width // down))
        assert float(raw[f"style_weight.{layer}"]) == pytest.approx(expected_raw, rel=1e-6)
        assert float(gatys[f"style_weight.{layer}"]) == pytest.approx(expected_raw * 1e3 / channels ** 2, rel=1e-6)
    # Nothing else changes.
    for name in raw:
        if not name.startswith("style_weight."):
            np.testing.assert_array_equal(raw[name], gatys[name])
