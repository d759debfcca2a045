"""Start images (noise, content, style, a file) and several style images blended.

With the real VGG16 at tiny sizes. Expected images come from Pillow + NumPy
preprocessing written in features_support, expected losses and gradients from the
float64 reference in tests/loss_reference.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import loss_reference as ref
from engine import Evaluated, IterationDone, Prepared, TransferConfig
from features_support import (CONTENT, SHALLOW, STYLE, SessionRuns, caffe, engine_for, periodic_texture,
                              record_evaluated_points, relative_l2, tiny_config, write_png)

GRAD_REL_L2 = 1e-3



@pytest.fixture(scope="module")
def second_style(tmp_path_factory) -> Path:
    """A style quite unlike examples/style.jpg: a synthetic periodic pattern, 120x90."""
    return write_png(tmp_path_factory.mktemp("styles") / "pattern.png", periodic_texture(120, 90, period=12))


@pytest.fixture(scope="module")
def third_style(tmp_path_factory) -> Path:
    rng = np.random.default_rng(11)
    return write_png(tmp_path_factory.mktemp("styles3") / "speckle.png", rng.integers(0, 256, (64, 80, 3)))


def first_evaluated_point(models_dir, monkeypatch, **changes) -> tuple[np.ndarray, tuple]:
    points = record_evaluated_points(monkeypatch)
    events = []
    engine_for(models_dir, iterations=1, maxfun=1, **changes).run(CONTENT, STYLE, callback=events.append)
    prepared = events[0]
    assert isinstance(prepared, Prepared)
    return points[0].reshape(1, 3, prepared.height, prepared.width), (prepared.width, prepared.height)


# ---------------------------------------------------------------- init


def test_init_content_first_evaluated_image_is_the_preprocessed_content(models_dir, monkeypatch):
    x0, size = first_evaluated_point(models_dir, monkeypatch, init="content")
    assert size == (32, 16)
    np.testing.assert_allclose(x0, caffe(CONTENT, size), atol=1e-3)


def test_init_style_first_evaluated_image_is_the_preprocessed_style(models_dir, monkeypatch):
    x0, size = first_evaluated_point(models_dir, monkeypatch, init="style")
    np.testing.assert_allclose(x0, caffe(STYLE, size), atol=1e-3)


def test_init_file_first_evaluated_image_is_that_file_at_the_working_size(tmp_path, models_dir, monkeypatch):
    start = write_png(tmp_path / "start.png", periodic_texture(50, 40, period=10))
    x0, size = first_evaluated_point(models_dir, monkeypatch, init=str(start))
    np.testing.assert_allclose(x0, caffe(start, size), atol=1e-3)


def test_init_noise_first_evaluated_image_is_the_seeds_uniform_noise(models_dir, monkeypatch):
    x0, size = first_evaluated_point(models_dir, monkeypatch, init="noise", seed=4)
    expected = np.random.default_rng(4).uniform(0, 255, (1, 3, size[1], size[0])) - 128.0
    np.testing.assert_allclose(x0, expected, atol=1e-9)


def test_init_style_with_a_style_scale_starts_at_the_output_size(models_dir, monkeypatch):
    # The style array fed to the network is smaller here (style_scale 0.5); the start
    # image must still have the working size, and show the style.
    x0, size = first_evaluated_point(models_dir, monkeypatch, init="style", style_scale=0.5, size=64)
    assert x0.shape == (1, 3, size[1], size[0])
    style, content = caffe(STYLE, size), caffe(CONTENT, size)
    # Upsampled from the smaller style array: the style's layout, with less detail.
    assert relative_l2(block_means(x0), block_means(style)) < 0.1
    assert relative_l2(x0, style) < 0.5 * relative_l2(content, style)


def block_means(x: np.ndarray, k: int = 8) -> np.ndarray:
    c, h, w = x.shape[1:]
    return x[0].reshape(c, h // k, k, w // k, k).mean(axis=(2, 4))


def test_init_content_reaches_a_much_lower_loss_than_noise_after_the_same_evaluations(models_dir):
    # The seed's starry_tubingen weights with the style weights / 1e4, so neither
    # content nor style dominates at 64 px; one iteration of 5 evaluations each.
    weights = dict(size=64, maxfun=5, style_weights=(0.1, 0.01, 0.0012, 1e-4, 1e-4))
    finals, evaluations = {}, {}
    for init in ("noise", "content"):
        events = []
        result = engine_for(models_dir, init=init, **weights).run(CONTENT, STYLE, callback=events.append)
        finals[init] = result.iterations[-1]
        evaluations[init] = sum(isinstance(e, Evaluated) for e in events)
    assert evaluations["content"] == evaluations["noise"]
    assert finals["content"].loss < 0.5 * finals["noise"].loss
    assert finals["content"].content < 0.2 * finals["noise"].content


# ---------------------------------------------------------------- several styles


@pytest.mark.parametrize("count", [1, 3])
def test_one_graph_run_per_evaluation_whatever_the_number_of_styles(
        models_dir, monkeypatch, second_style, third_style, count):
    runs = SessionRuns()
    counts = {"evaluations": 0, "iterations": 0, "runs_at_prepared": None}

    def callback(event):
        if isinstance(event, Prepared):
            counts["runs_at_prepared"] = len(runs.calls)
        elif isinstance(event, Evaluated):
            counts["evaluations"] += 1
        elif isinstance(event, IterationDone):
            counts["iterations"] += 1

    runs.install(monkeypatch)
    styles = [STYLE, second_style, third_style][:count]
    engine_for(models_dir, iterations=2, maxfun=3, style_blend=(1, 2, 1)[:count]).run(
        CONTENT, styles, callback=callback)
    during = runs.calls[counts["runs_at_prepared"]:]
    assert {kind for kind, _ in during} == {"iobinding"}          # the loss-gradient session only
    assert len({id(session) for _, session in during}) == 1
    # One run per evaluation, plus at most one per iteration for the reported terms.
    assert counts["evaluations"] >= 2 * 3
    assert counts["evaluations"] <= len(during) <= counts["evaluations"] + counts["iterations"]


@pytest.fixture(scope="module")
def blended(models_dir, vgg16_layers, second_style):
    """A two-style problem (blend 3:1) and the reference's per-style Gram targets."""
    blend = (3.0, 1.0)
    cfg = tiny_config(style_blend=blend, **SHALLOW)
    from engine import StyleTransfer

    problem = StyleTransfer(cfg, models_dir=models_dir, provider="cpu", threads=2).prepare(
        CONTENT, [STYLE, second_style])
    targets = [ref.targets(vgg16_layers, problem.content[0], style[0], cfg.content_layer, cfg.style_layers)
               for style in problem.styles]
    return cfg, problem, np.array(blend) / sum(blend), targets


def reference_blended_loss(vgg16_layers, cfg, weights, targets, x):
    """sum_i b_i * (the seed's loss with style i's own Gram targets); content and tv once."""
    total_terms, total_grad = {"loss": 0.0}, 0.0
    for i, (b, (content_target, grams)) in enumerate(zip(weights, targets)):
        terms, grad = ref.loss_and_grad(
            vgg16_layers, x, content_target, grams, cfg.content_weight if i == 0 else 0.0,
            [b * w for w in cfg.style_weights], cfg.tv_weight if i == 0 else 0.0,
            cfg.content_layer, cfg.style_layers)
        total_terms["loss"] += terms["loss"]
        total_grad = total_grad + grad
    return total_terms["loss"], total_grad


def test_blended_style_gradient_is_that_of_the_weighted_sum_of_per_style_losses(vgg16_layers, blended):
    cfg, problem, weights, targets = blended
    rng = np.random.default_rng(21)
    differences = []
    for x in (rng.uniform(-128, 127, problem.shape), problem.content.astype(np.float64) + rng.normal(0, 20, problem.shape)):
        loss, grad = problem.loss_and_grad(x)
        expected_loss, expected_grad = reference_blended_loss(vgg16_layers, cfg, weights, targets, x[0])
        assert relative_l2(grad[0], expected_grad) <= GRAD_REL_L2
        differences.append((expected_loss - loss, expected_loss))

    # sum_i b_i ||G - T_i||^2 = ||G - sum_i b_i T_i||^2 + sum_i b_i ||T_i||^2 - ||sum_i b_i T_i||^2:
    # the losses differ by a constant, the same at every x, and >= 0.
    constant = 0.0
    for layer, w in zip(cfg.style_layers, cfg.style_weights):
        grams = [g[layer] for _, g in targets]
        blend = sum(b * g for b, g in zip(weights, grams))
        spread = sum(b * np.sum(g ** 2) for b, g in zip(weights, grams)) - np.sum(blend ** 2)
        downsampling = 2 ** (int(layer[5]) - 1)
        positions = (problem.shape[2] // downsampling) * (problem.shape[3] // downsampling)
        constant += w / len(cfg.style_layers) / (4.0 * positions ** 2) * spread
    assert constant > 0
    for difference, scale in differences:
        assert difference == pytest.approx(constant, abs=2e-4 * scale)
    assert differences[0][0] == pytest.approx(differences[1][0], abs=2e-4 * max(s for _, s in differences))


def test_run_record_lists_every_style_and_the_blend(tmp_path, models_dir, second_style):
    output = tmp_path / "blend.png"
    engine_for(models_dir, style_blend=(3, 1), init="content").run(CONTENT, [STYLE, second_style], output)
    record = json.loads((tmp_path / "blend.json").read_text())
    assert record["style"] == [str(STYLE), str(second_style)]
    assert record["config"]["style_blend"] == [3.0, 1.0]
    assert record["config"]["init"] == "content"
    assert TransferConfig(**record["config"]).style_blend == (3.0, 1.0)
