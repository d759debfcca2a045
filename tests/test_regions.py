"""Regions (guided Gram matrices, Gatys et al. 2017): masks read from paint-program images,
the loss and its gradient against the float64 reference of tests/regions_reference.py
(synthetic VGG16 through the graphs, real VGG16 through the whole host path), a run that
puts each style where its mask says, and one clear line for every mask mistake.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

import loss_reference as ref
import regions_reference as rref
import vgg_reference
from conftest import error_line, ort_session, written
from engine import StyleTransfer, TransferConfig
from engine.cli import app
from engine.errors import ConfigError, ImageError
from engine.graph import lossgrad
from engine.graph.lossgrad import LayerChoice
from engine.io.masks import load_mask
from engine.models import vgg
from engine.models.export import feature_graph
from engine.models.weights import VGGWeights
from engine.run.regions import RegionTargets

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / "examples" / "content.jpg"
STYLE = ROOT / "examples" / "style.jpg"
LOSS_RTOL = 1e-4
GRAD_REL_L2 = 1e-3
MIXED = LayerChoice("block3_conv1", ("block3_conv1", "block1_conv2", "block4_conv1", "block2_conv1"))
MIXED_WEIGHTS = (1000.0, 100.0, 12.0, 1.0)


def soft_split(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A left/right pair with a soft diagonal boundary, summing to 1 everywhere."""
    yy, xx = np.mgrid[0:h, 0:w]
    left = np.clip((0.6 * w - xx - 0.3 * yy) / 6.0 + 0.5, 0, 1)
    return left, 1 - left


@pytest.fixture(scope="module")
def synthetic_weights() -> VGGWeights:
    return VGGWeights("vgg16", vgg_reference.random_weights("vgg16", seed=5), "synthetic-5")


@pytest.fixture(scope="module")
def synthetic_features(synthetic_weights) -> onnx.ModelProto:
    return feature_graph(synthetic_weights)


# ---------------------------------------------------------------- masks from paint programs


def test_masks_read_luminance_or_alpha_at_any_size(tmp_path):
    grey = np.zeros((30, 40), np.uint8)
    grey[:, 20:] = 255
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[:, 20:] = (255, 255, 255)
    rgb[:, :20] = (0, 0, 255)        # pure blue: luminance 0.114, mostly out
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=100)
    rgba = np.zeros((15, 20, 4), np.uint8)
    rgba[..., :3] = (200, 30, 30)     # one colour everywhere: the alpha says where
    rgba[:, 10:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    sixteen = (grey.astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")

    for name, left in (("grey.png", 0.0), ("rgb.jpg", 0.114), ("rgba.png", 0.0), ("sixteen.png", 0.0)):
        mask = load_mask(tmp_path / name, (80, 60))
        assert mask.shape == (60, 80) and mask.dtype == np.float32
        assert mask[:, :35].mean() == pytest.approx(left, abs=0.01), name
        assert mask[:, 45:].mean() == pytest.approx(1.0, abs=0.01), name
        assert 0.0 <= mask.min() and mask.max() <= 1.0


def test_an_opaque_rgba_mask_is_read_by_its_luminance(tmp_path):
    rgba = np.full((10, 10, 4), 255, np.uint8)
    rgba[:, :5, :3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    mask = load_mask(tmp_path / "opaque.png", (10, 10))
    assert mask[:, :4].max() == 0.0 and mask[:, 6:].min() == 1.0


def test_an_unreadable_mask_is_one_image_error(tmp_path):
    (tmp_path / "mask.png").write_text("not an image")
    with pytest.raises(ImageError, match="mask.png.*not a readable image"):
        load_mask(tmp_path / "mask.png", (8, 8))


# ---------------------------------------------------------------- the reference itself


@pytest.mark.parametrize("wrap", [False, True], ids=["zero-padding", "circular"])
def test_reference_gradient_with_regions_matches_finite_differences(wrap):
    rng = np.random.default_rng(12)
    layers = [("block1_conv1", rng.standard_normal((3, 3, 3, 3)), rng.standard_normal(3) * 0.1, False),
              ("block1_conv2", rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4) * 0.1, True),
              ("block2_conv1", rng.standard_normal((3, 4, 3, 3)), rng.standard_normal(3) * 0.1, False)]
    x, content, style_a, style_b = (rng.standard_normal((3, 6, 8)) for _ in range(4))
    masks = soft_split(6, 8)
    style_layers = ("block2_conv1", "block1_conv1")
    targets = [rref.mean_grams(layers, s, m, style_layers, wrap=wrap)
               for s, m in ((style_a, rng.uniform(0, 1, (6, 8))), (style_b, np.ones((6, 8))))]
    content_target = rref.forward(layers, content, "block1_conv2", wrap=wrap)[0]["block1_conv2"]
    args = (content_target, targets, masks, 0.7, (2.0, 5.0), 0.3, "block1_conv2", style_layers, "max", wrap)
    _, grad = rref.loss_and_grad(layers, x, *args)
    eps = 1e-6
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        numeric[index] = (rref.loss_and_grad(layers, x + step, *args)[0]["loss"]
                          - rref.loss_and_grad(layers, x - step, *args)[0]["loss"]) / (2 * eps)
    assert ref.relative_l2(grad, numeric) < 1e-6


def test_reference_with_one_full_region_is_the_seeds_loss():
    rng = np.random.default_rng(4)
    layers = ref.vgg_layers(vgg_reference.random_weights("vgg16", seed=1))[:4]
    x, content, style = (rng.standard_normal((3, 8, 8)) * 50 for _ in range(3))
    style_layers = ("block1_conv2", "block2_conv1")
    content_target, grams = ref.targets(layers, content, style, "block2_conv2", style_layers)
    seed_terms, seed_grad = ref.loss_and_grad(layers, x, content_target, grams, 1.0, (3.0, 2.0), 0.5,
                                              "block2_conv2", style_layers)
    full = np.ones((8, 8))
    terms, grad = rref.loss_and_grad(layers, x, content_target, [rref.mean_grams(layers, style, full, style_layers)],
                                     [full], 1.0, (3.0, 2.0), 0.5, "block2_conv2", style_layers)
    assert terms["loss"] == pytest.approx(seed_terms["loss"], rel=1e-12)
    assert ref.relative_l2(grad, seed_grad) < 1e-12


# ---------------------------------------------------------------- graphs against the reference


def graph_feeds(choice: LayerChoice, layers, x, content, style_images, style_masks, masks, wrap=False,
                content_weight=100.0, style_weights=MIXED_WEIGHTS, tv_weight=200.0):
    """The loss graph's feeds, the region targets folded by the engine's RegionTargets, and the reference."""
    deepest = max([choice.content_layer, *choice.style_layers], key=[n for n, *_ in layers].index)
    content_target = rref.forward(layers, content, deepest, wrap=wrap)[0][choice.content_layer]
    targets = [rref.mean_grams(layers, s, m, choice.style_layers, wrap=wrap)
               for s, m in zip(style_images, style_masks)]
    regions = RegionTargets([m.astype(np.float32) for m in masks], targets)
    feeds = {"image": x[None].astype(np.float32), lossgrad.CONTENT_TARGET: content_target[None].astype(np.float32),
             lossgrad.CONTENT_WEIGHT: np.array(content_weight, np.float32),
             lossgrad.TV_WEIGHT: np.array(tv_weight, np.float32), **regions.mask_inputs()}
    for layer, weight in zip(choice.style_layers, style_weights):
        downsampling = vgg.conv_layer("vgg16", layer).downsampling
        feeds.update(regions.layer_inputs(layer, downsampling, weight / len(choice.style_layers)))
    terms, grad = rref.loss_and_grad(layers, x, content_target, targets, masks, content_weight, style_weights,
                                     tv_weight, choice.content_layer, choice.style_layers, wrap=wrap)
    return feeds, terms, grad


def assert_graph_matches(model, feeds, terms, grad, style_layers):
    sess = ort_session(model)
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    for name in ("loss", "content", "tv", *(f"style.{layer}" for layer in style_layers)):
        assert float(outputs[name]) == pytest.approx(terms[name], rel=LOSS_RTOL), name
    assert ref.relative_l2(outputs["grad"][0], grad) <= GRAD_REL_L2


@pytest.mark.parametrize("tileable", [False, True], ids=["plain", "tileable"])
def test_two_region_loss_graph_matches_reference_on_synthetic_vgg(synthetic_weights, synthetic_features, tileable):
    choice = LayerChoice(MIXED.content_layer, MIXED.style_layers, regions=2, tileable=tileable)
    rng = np.random.default_rng(0)
    x, content, style_a, style_b = (rng.standard_normal((3, 16, 24)) * 50 for _ in range(4))
    style_masks = [rng.uniform(0, 1, (16, 24)), np.ones((16, 24))]
    layers = ref.vgg_layers(synthetic_weights.layers)
    feeds, terms, grad = graph_feeds(choice, layers, x, content, [style_a, style_b], style_masks, soft_split(16, 24),
                                     wrap=tileable)
    assert_graph_matches(lossgrad.build_loss_graph(synthetic_features, choice), feeds, terms, grad,
                         choice.style_layers)
    assert all(terms[f"style.{layer}"] > 0 for layer in choice.style_layers)


def test_style_graph_grams_are_of_the_masked_style_features(synthetic_weights, synthetic_features):
    choice = LayerChoice(MIXED.content_layer, MIXED.style_layers, regions=2)
    rng = np.random.default_rng(2)
    style, mask = rng.standard_normal((3, 16, 24)) * 50, rng.uniform(0, 1, (16, 24))
    sess = ort_session(lossgrad.build_style_graph(synthetic_features, choice))
    outputs = sess.run([lossgrad.gram_output(layer) for layer in choice.style_layers],
                       {"image": style[None].astype(np.float32),
                        lossgrad.STYLE_MASK: mask[None, None].astype(np.float32)})
    layers = ref.vgg_layers(synthetic_weights.layers)
    expected = rref.mean_grams(layers, style, mask, choice.style_layers)
    acts = rref.forward(layers, style, "block4_conv1")[0]
    for layer, gram in zip(choice.style_layers, outputs):
        area = np.sum(rref.mask_at(mask, acts[layer].shape[1:]) ** 2)
        assert ref.relative_l2(gram, expected[layer] * area) < 1e-4, layer


def test_one_full_region_gives_the_seeds_loss_graph_values(synthetic_features):
    # The guided graph with one all-ones mask and the plain graph: the same loss and gradient.
    rng = np.random.default_rng(8)
    choice = LayerChoice("block2_conv2", ("block1_conv1", "block2_conv1"))
    x = rng.standard_normal((1, 3, 16, 24)).astype(np.float32) * 50
    target = {layer: rng.standard_normal((c, c)).astype(np.float32) ** 2 for layer, c in
              (("block1_conv1", 64), ("block2_conv1", 128))}
    common = {"image": x, lossgrad.CONTENT_TARGET: np.zeros((1, 128, 8, 12), np.float32),
              lossgrad.CONTENT_WEIGHT: np.array(0.5, np.float32), lossgrad.TV_WEIGHT: np.array(0.1, np.float32)}
    plain = {**common, **{lossgrad.gram_target(l): t for l, t in target.items()},
             **{lossgrad.style_weight(l): np.array(1e-4, np.float32) for l in target}}
    guided = {**common, lossgrad.region_mask(0): np.ones((1, 1, 16, 24), np.float32),
              **{lossgrad.gram_target(l, 0): t for l, t in target.items()},
              **{lossgrad.style_weight(l, 0): np.array(1e-4, np.float32) for l in target}}
    a = ort_session(lossgrad.build_loss_graph(synthetic_features, choice)).run(["loss", "grad"], plain)
    guided_choice = LayerChoice(choice.content_layer, choice.style_layers, regions=1)
    b = ort_session(lossgrad.build_loss_graph(synthetic_features, guided_choice)).run(["loss", "grad"], guided)
    assert float(b[0]) == pytest.approx(float(a[0]), rel=1e-5)
    assert ref.relative_l2(b[1], a[1]) < 1e-5


def test_regions_on_real_vgg16_match_reference_through_prepare(tmp_path, models_dir, vgg16_layers):
    # The whole host path: masks read from files, style masks, the targets graph, the areas
    # folded into the loss graph's inputs.
    left, right = soft_split(32, 48)
    for name, mask in (("left.png", left), ("right.png", right)):
        Image.fromarray(np.round(mask * 255).astype(np.uint8)).save(tmp_path / name)
    style_mask = np.zeros((32, 48), np.uint8)
    style_mask[8:, 10:40] = 255
    Image.fromarray(style_mask).save(tmp_path / "style_part.png")
    # Shallow layers keep the float64 reference quick; the deep ones add nothing the masks do.
    cfg = TransferConfig(content_layer="block3_conv2", style_layers=("block1_conv1", "block2_conv1", "block3_conv1"),
                         style_weights=(1000, 100, 12), content_weight=100,
                         tv_weight=200, size=48, content_masks=(tmp_path / "left.png", tmp_path / "right.png"),
                         style_masks=(tmp_path / "style_part.png", tmp_path / "right.png"))
    problem = StyleTransfer(cfg, models_dir=models_dir, provider="cpu", threads=2).prepare(CONTENT, [STYLE, CONTENT])
    assert problem.shape == (1, 3, 32, 48)
    x = 0.5 * problem.initial_image() + 0.5 * problem.content
    loss, grad = problem.loss_and_grad(x)
    masks = [load_mask(tmp_path / n, (48, 32)) for n in ("left.png", "right.png")]
    style_masks = [load_mask(tmp_path / n, (48, 32)) for n in ("style_part.png", "right.png")]
    targets = [rref.mean_grams(vgg16_layers, s[0], m, cfg.style_layers) for s, m in zip(problem.styles, style_masks)]
    content_target = rref.forward(vgg16_layers, problem.content[0], cfg.content_layer)[0][cfg.content_layer]
    terms, expected = rref.loss_and_grad(vgg16_layers, x[0], content_target, targets, masks, cfg.content_weight,
                                         cfg.style_weights, cfg.tv_weight, cfg.content_layer, cfg.style_layers)
    assert loss == pytest.approx(terms["loss"], rel=LOSS_RTOL)
    assert ref.relative_l2(grad[0], expected) <= GRAD_REL_L2
    summary = problem.terms(x)
    for layer in cfg.style_layers:
        assert summary[f"style.{layer}"] == pytest.approx(terms[f"style.{layer}"], rel=LOSS_RTOL), layer


# ---------------------------------------------------------------- the picture


def test_each_region_takes_its_own_styles_colours(tmp_path, models_dir):
    # A red and a green style on the photo, the left of the picture red, the right green,
    # then the masks swapped: the colours follow the masks.
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 60, (64, 64, 1))
    Image.fromarray(np.concatenate([200 + noise, noise, noise], axis=2).astype(np.uint8)).save(tmp_path / "red.png")
    Image.fromarray(np.concatenate([noise, 200 + noise, noise], axis=2).astype(np.uint8)).save(tmp_path / "green.png")
    left = np.zeros((48, 64), np.uint8)
    left[:, :32] = 255
    Image.fromarray(left).save(tmp_path / "left.png")
    Image.fromarray(255 - left).save(tmp_path / "right.png")

    def red_minus_green(masks):
        cfg = TransferConfig(content_layer="block2_conv2", style_layers=("block1_conv1", "block2_conv1"),
                             style_weights=(1e4, 1e3), content_weight=1.0, tv_weight=1e-2, size=64,
                             iterations=2, maxfun=15, save_every=0, init="content",
                             content_masks=tuple(tmp_path / m for m in masks))
        image = StyleTransfer(cfg, models_dir=models_dir, provider="cpu", threads=2).run(
            CONTENT, [tmp_path / "red.png", tmp_path / "green.png"]).image.astype(float)
        difference = image[..., 0] - image[..., 1]
        return difference[:, :28].mean(), difference[:, 36:].mean()

    left_side, right_side = red_minus_green(("left.png", "right.png"))
    assert left_side - right_side > 40
    left_side, right_side = red_minus_green(("right.png", "left.png"))
    assert right_side - left_side > 40


# ---------------------------------------------------------------- mistakes: one line, before any work


runner = CliRunner()


@pytest.fixture
def masks(tmp_path) -> dict[str, Path]:
    left = np.zeros((20, 30), np.uint8)
    left[:, :15] = 255
    files = {"left": left, "right": 255 - left, "black": np.zeros((20, 30), np.uint8),
             "top": np.pad(np.full((10, 30), 255, np.uint8), ((0, 10), (0, 0)))}
    for name, array in files.items():
        Image.fromarray(array).save(tmp_path / f"{name}.png")
    return {name: tmp_path / f"{name}.png" for name in files}


@pytest.mark.parametrize("styles, options, fragments", [
    ("one", ["--content-masks", "{left},{right}"], ["2 content masks for 1 style images"]),
    ("two", ["--content-masks", "{left},{black}"], ["black.png", "is empty"]),
    ("two", ["--content-masks", "{left},{top}"], ["25.0% of the image without a style"]),
    ("two", ["--content-masks", "{left},{right}", "--style-masks", "{left}"], ["1 style masks for 2 content masks"]),
    ("two", ["--content-masks", "{left},{right}", "--style-masks", "{black},{left}"], ["style mask", "is empty"]),
    ("two", ["--content-masks", "{left},{nowhere}"], ["nowhere.png", "not an existing image file"]),
    ("two", ["--content-masks", "{left},{right}", "--style-blend", "1,2"], ["style_blend and content_masks"]),
    ("one", ["--style-masks", "{left}"], ["style_masks need content_masks"]),
], ids=["count", "empty", "uncovered", "style-count", "empty-style", "missing", "blend", "style-without-content"])
def test_mask_mistakes_are_one_line_before_any_work(tmp_path, models_dir, masks, monkeypatch, styles, options,
                                                    fragments):
    import engine.run.engine

    def no_work(*args, **kwargs):
        raise AssertionError("a session was opened before the mistake was reported")
    monkeypatch.setattr(engine.run.engine, "create_session", no_work)
    paths = {**masks, "nowhere": tmp_path / "nowhere.png"}
    style = f"{STYLE},{CONTENT}" if styles == "two" else str(STYLE)
    out = tmp_path / "out"
    result = runner.invoke(app, ["stylize", str(CONTENT), style, "-o", str(out / "x.png"), "--size", "32",
                                 "--provider", "cpu", "--models-dir", str(models_dir),
                                 *[o.format(**paths) for o in options]])
    line = error_line(result)
    for fragment in fragments:
        assert fragment in line, line
    assert written(out) == []


def test_config_takes_mask_paths_and_keeps_them_as_strings(masks):
    cfg = TransferConfig(content_masks=[masks["left"], masks["right"]])
    assert cfg.content_masks == (str(masks["left"]), str(masks["right"]))
    assert TransferConfig(**cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="content_masks is empty"):
        TransferConfig(content_masks=())
