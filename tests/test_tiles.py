"""Seamless tiles (--tileable): circular padding in every convolution and a wrapping total
variation, against the float64 reference of tests/regions_reference.py; the loss of a torus
is blind to where the picture is cut; a real run's wrap seam; the 2x2 preview.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import loss_reference as ref
import regions_reference as rref
import vgg_reference
from conftest import ort_session
from engine import StyleTransfer, TransferConfig
from engine.graph import lossgrad
from engine.graph.lossgrad import LayerChoice
from engine.models.export import feature_graph
from engine.models.weights import VGGWeights

ROOT = Path(__file__).resolve().parent.parent
STYLE = ROOT / "examples" / "style.jpg"
# Content layer also a style layer, style layers out of order; shallow, so the float64 reference is quick.
MIXED = LayerChoice("block2_conv2", ("block2_conv1", "block1_conv2", "block3_conv1", "block1_conv1"), tileable=True)
MIXED_WEIGHTS = (1000.0, 100.0, 12.0, 1.0)


@pytest.fixture(scope="module")
def synthetic_weights() -> VGGWeights:
    return VGGWeights("vgg16", vgg_reference.random_weights("vgg16", seed=6), "synthetic-6")


@pytest.fixture(scope="module")
def synthetic_features(synthetic_weights) -> onnx.ModelProto:
    return feature_graph(synthetic_weights)


def seed_feeds(choice, layers, x, content, style, content_weight=100.0, tv_weight=200.0):
    """Feeds of the plain (unmasked) loss graph, its targets computed by the circular reference."""
    deepest = choice.deepest("vgg16")
    acts_c = rref.forward(layers, content, deepest, wrap=True)[0]
    acts_s = rref.forward(layers, style, deepest, wrap=True)[0]
    feeds = {"image": x[None].astype(np.float32),
             lossgrad.CONTENT_TARGET: acts_c[choice.content_layer][None].astype(np.float32),
             lossgrad.CONTENT_WEIGHT: np.array(content_weight, np.float32),
             lossgrad.TV_WEIGHT: np.array(tv_weight, np.float32)}
    for layer, weight in zip(choice.style_layers, MIXED_WEIGHTS):
        feeds[lossgrad.gram_target(layer)] = ref.gram(acts_s[layer]).astype(np.float32)
        feeds[lossgrad.style_weight(layer)] = np.array(
            ref.style_coefficient(weight, len(choice.style_layers), acts_s[layer].shape), np.float32)
    return feeds, acts_c[choice.content_layer], acts_s


def test_tileable_loss_graph_matches_circular_reference_on_synthetic_vgg(synthetic_weights, synthetic_features):
    rng = np.random.default_rng(1)
    x, content, style = (rng.standard_normal((3, 16, 24)) * 50 for _ in range(3))
    layers = ref.vgg_layers(synthetic_weights.layers)
    feeds, content_target, _ = seed_feeds(MIXED, layers, x, content, style)
    full = np.ones((16, 24))
    targets = [rref.mean_grams(layers, style, full, MIXED.style_layers, wrap=True)]
    terms, grad = rref.loss_and_grad(layers, x, content_target, targets, [full], 100.0, MIXED_WEIGHTS, 200.0,
                                     MIXED.content_layer, MIXED.style_layers, wrap=True)
    sess = ort_session(lossgrad.build_loss_graph(synthetic_features, MIXED))
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    for name in ("loss", "content", "tv", *(f"style.{layer}" for layer in MIXED.style_layers)):
        assert float(outputs[name]) == pytest.approx(terms[name], rel=1e-4), name
    assert ref.relative_l2(outputs["grad"][0], grad) <= 1e-3
    # Not the zero-padded loss: the border matters.
    plain, _ = rref.loss_and_grad(layers, x, content_target, targets, [full], 100.0, MIXED_WEIGHTS, 200.0,
                                  MIXED.content_layer, MIXED.style_layers, wrap=False)
    assert abs(plain["loss"] - terms["loss"]) > 1e-3 * terms["loss"]


def test_a_torus_loss_is_blind_to_where_the_picture_is_cut(synthetic_features):
    # Rolling the image by whole pooling windows rolls the gradient and keeps the style and
    # TV terms (Grams and wrapped differences sum over the whole torus).
    rng = np.random.default_rng(3)
    x, style = (rng.standard_normal((1, 3, 16, 24)).astype(np.float32) * 50 for _ in range(2))
    sess = ort_session(lossgrad.build_loss_graph(synthetic_features, MIXED))
    targets = [*ort_session(lossgrad.build_content_graph(synthetic_features, MIXED)).run(
        [lossgrad.features_output(MIXED.content_layer)], {"image": style}),
               *ort_session(lossgrad.build_style_graph(synthetic_features, MIXED)).run(
        [lossgrad.gram_output(l) for l in MIXED.style_layers], {"image": style})]
    feeds = {lossgrad.CONTENT_TARGET: targets[0], lossgrad.CONTENT_WEIGHT: np.array(0.0, np.float32),
             lossgrad.TV_WEIGHT: np.array(3.0, np.float32)}
    for layer, gram in zip(MIXED.style_layers, targets[1:]):
        feeds[lossgrad.gram_target(layer)] = gram
        feeds[lossgrad.style_weight(layer)] = np.array(1e-9, np.float32)
    loss, grad = sess.run(["loss", "grad"], {"image": x, **feeds})
    shift = (4, 12)   # whole block3 pooling windows (4 px)
    rolled_loss, rolled_grad = sess.run(["loss", "grad"], {"image": np.roll(x, shift, axis=(2, 3)), **feeds})
    assert float(rolled_loss) == pytest.approx(float(loss), rel=1e-4)
    assert ref.relative_l2(rolled_grad, np.roll(grad, shift, axis=(2, 3))) < 1e-4


def test_tileable_and_plain_graphs_are_cached_apart(tmp_path, synthetic_weights):
    from engine.models.export import export

    model = export(synthetic_weights, tmp_path / "models" / "vgg16.onnx")
    plain = lossgrad.graph_paths(model, LayerChoice("block2_conv2", ("block1_conv1",)))
    tiled = lossgrad.graph_paths(model, LayerChoice("block2_conv2", ("block1_conv1",), tileable=True))
    regions = lossgrad.graph_paths(model, LayerChoice("block2_conv2", ("block1_conv1",), regions=2))
    assert len({plain.loss, tiled.loss, regions.loss}) == 3
    ops = {node.op_type for node in onnx.load(tiled.loss).graph.node}
    assert "Concat" in ops and "Concat" not in {node.op_type for node in onnx.load(plain.loss).graph.node}


def seam_and_steps(image: np.ndarray) -> tuple[float, np.ndarray]:
    """The mean step across the wrap seams (last column to first, last row to first) and the
    mean step across every other column and row boundary."""
    im = image.astype(np.float64)
    columns = np.abs(np.diff(np.concatenate([im, im[:, :1]], axis=1), axis=1)).mean(axis=(0, 2))
    rows = np.abs(np.diff(np.concatenate([im, im[:1]], axis=0), axis=0)).mean(axis=(1, 2))
    return (columns[-1] + rows[-1]) / 2, np.concatenate([columns[:-1], rows[:-1]])


def test_a_tileable_texture_has_no_seam_and_a_plain_one_has(models_dir):
    # A texture from noise (no content term), 80 evaluations at 32 px: with --tileable the
    # step across the wrap seam is one of the picture's ordinary neighbour steps; without,
    # the borders never met and the seam stands out.
    seams = {}
    for tileable in (False, True):
        cfg = TransferConfig(content_layer="block3_conv2",
                             style_layers=("block1_conv1", "block2_conv1", "block3_conv1"),
                             style_weights=(1.0, 0.1, 0.01), content_weight=0.0, tv_weight=3e4, size=32,
                             iterations=1, maxfun=80, optimizer_mode="continuous", init="noise", save_every=0,
                             tileable=tileable)
        image = StyleTransfer(cfg, models_dir=models_dir, provider="cpu", threads=2).run(STYLE, STYLE).image
        seam, steps = seam_and_steps(image)
        seams[tileable] = seam
        if tileable:
            assert image.shape[:2] == (28, 32)   # the working size, not resized after (that would cut the wrap)
            assert seam <= np.percentile(steps, 90), (seam, steps.mean())
        else:
            assert seam > np.percentile(steps, 90), (seam, steps.mean())
    assert seams[False] > 2 * seams[True], seams


def test_tile_preview_writes_the_result_two_by_two(tmp_path, models_dir):
    from typer.testing import CliRunner
    from engine.cli import app

    output = tmp_path / "tile.png"
    result = CliRunner().invoke(app, ["stylize", str(STYLE), str(STYLE), "-o", str(output), "--size", "32",
                                      "--iterations", "1", "--maxfun", "3", "--provider", "cpu", "--threads", "2",
                                      "--style-layers", "block1_conv1,block2_conv1", "--style-weights", "1,1",
                                      "--content-layer", "block2_conv2", "--tileable", "--tile-preview",
                                      "--models-dir", str(models_dir)])
    assert result.exit_code == 0, result.output
    with Image.open(output) as tile, Image.open(tmp_path / "tile_tiled.png") as mosaic:
        tile, mosaic = np.asarray(tile.convert("RGB")), np.asarray(mosaic.convert("RGB"))
    assert mosaic.shape == (2 * tile.shape[0], 2 * tile.shape[1], 3)
    np.testing.assert_array_equal(mosaic, np.tile(tile, (2, 2, 1)))


def test_tileable_refuses_putting_back_the_contents_colours():
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="would not wrap; use preserve_colors histogram"):
        TransferConfig(tileable=True, preserve_colors="luminance")
    assert TransferConfig(tileable=True, preserve_colors="histogram").tileable
