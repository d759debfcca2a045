"""Winograd F(m, 3) convolutions: exact transforms, graphs equal to the direct ones, one weight tensor."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine import StyleTransfer, TransferConfig
from engine.errors import ConfigError
from engine.graph import lossgrad, winograd
from engine.graph.builder import GraphBuilder
from engine.graph.lossgrad import LayerChoice
from engine.models.export import feature_graph
from engine.runtime.memory import eval_memory_breakdown

from test_loss_graph import MIXED, SEED_STYLE_LAYERS, synthetic_weights  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
CONTENT, STYLE = ROOT / "examples" / "content.jpg", ROOT / "examples" / "style.jpg"
LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4   # Winograd against the direct graph (issue 12)


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("m", sorted(winograd.POINTS))
def test_transforms_compute_the_3_tap_correlation_exactly_in_float64(m):
    t = winograd.transforms(m)
    rng = np.random.default_rng(m)
    for _ in range(5):
        d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
        np.testing.assert_allclose(t.AT @ ((t.G @ g) * (t.BT @ d)), np.correlate(d, g, "valid"), atol=1e-12)


@pytest.mark.parametrize("m", sorted(winograd.POINTS))
def test_a_flipped_kernels_transform_is_a_scaled_permutation_of_the_kernels(m):
    t = winograd.transforms(m)
    perm, scale, alternate = winograd.flip_permutation(t)
    assert alternate == (m == 4)  # F(4,3)'s points are closed under t -> -1/t, F(2,3)'s under t -> 1/t
    g = np.random.default_rng(0).standard_normal(3)
    middle_negated = g * [1.0, -1.0, 1.0] if alternate else g
    np.testing.assert_allclose(t.G @ g[::-1], scale * (t.G @ middle_negated)[perm], atol=1e-12)


@pytest.mark.parametrize("m", sorted(winograd.POINTS))
@pytest.mark.parametrize("height, width", [(8, 8), (11, 6), (1, 3)])
def test_winograd_conv_and_its_input_gradient_equal_onnx_conv_and_conv_transpose(m, height, width):
    rng = np.random.default_rng(height * width)
    c, k = 5, 7
    x = rng.standard_normal((1, c, height, width)).astype(np.float32)
    dy = rng.standard_normal((1, k, height, width)).astype(np.float32)
    kernel = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    b = GraphBuilder()
    b.input("x", [1, c, "h", "w"])
    b.input("dy", [1, k, "h", "w"])
    u = b.const(winograd.kernel_transform(kernel, winograd.transforms(m)))
    b.output("y", winograd.conv_forward(b, "x", u, b.const(bias), k, m), [1, k, "h", "w"])
    b.output("dx", winograd.conv_input_gradient(b, "dy", "x", u, c, m), [1, c, "h", "w"])
    b.output("direct_y", b.op("Conv", "x", b.const(kernel), b.const(bias), pads=[1, 1, 1, 1]), [1, k, "h", "w"])
    b.output("direct_dx", b.op("ConvTranspose", "dy", b.const(kernel), pads=[1, 1, 1, 1]), [1, c, "h", "w"])
    sess = ort.InferenceSession(b.model("w").SerializeToString(), providers=["CPUExecutionProvider"])
    y, dx, direct_y, direct_dx = sess.run(None, {"x": x, "dy": dy})
    assert y.shape == direct_y.shape and dx.shape == direct_dx.shape
    assert relative_l2(y, direct_y) < 1e-5
    assert relative_l2(dx, direct_dx) < 1e-5


def run_loss_graphs(features: onnx.ModelProto, choice: LayerChoice, x: np.ndarray, content: np.ndarray,
                    style: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The direct and the Winograd loss graph's outputs at x, fed targets from the targets graphs."""
    def run(model, feeds):
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))

    feeds = {"image": x, lossgrad.CONTENT_WEIGHT: np.array(1.0, np.float32),
             lossgrad.TV_WEIGHT: np.array(1e-3, np.float32),
             lossgrad.CONTENT_TARGET: run(lossgrad.build_content_graph(features, choice), {"image": content})[
                 lossgrad.features_output(choice.content_layer)]}
    grams = run(lossgrad.build_style_graph(features, choice), {"image": style})
    for layer in choice.style_layers:
        feeds[lossgrad.gram_target(layer)] = grams[lossgrad.gram_output(layer)]
        feeds[lossgrad.style_weight(layer)] = np.array(1e-6, np.float32)
    fast = LayerChoice(choice.content_layer, choice.style_layers, winograd=True)
    return [run(lossgrad.build_loss_graph(features, c), feeds) for c in (choice, fast)]


@pytest.mark.parametrize("choice", [MIXED, LayerChoice("block4_conv2", SEED_STYLE_LAYERS)], ids=["mixed", "seed"])
def test_winograd_loss_graph_matches_the_direct_graph_on_a_synthetic_vgg(synthetic_weights, choice):
    features = feature_graph(synthetic_weights)
    fast = lossgrad.build_loss_graph(features, LayerChoice(choice.content_layer, choice.style_layers, winograd=True))
    assert "WinogradConv" not in {n.op_type for n in fast.graph.node}  # built from standard ops
    assert {"MatMul", "DepthToSpace"} <= {n.op_type for n in fast.graph.node}
    rng = np.random.default_rng(1)
    x, content, style = (rng.uniform(-100, 100, (1, 3, 48, 32)).astype(np.float32) for _ in range(3))
    expected, got = run_loss_graphs(features, choice, x, content, style)
    assert float(expected[lossgrad.LOSS]) > 0
    for name in expected:
        if expected[name].ndim == 0:
            assert float(got[name]) == pytest.approx(float(expected[name]), rel=LOSS_RTOL), name
    assert relative_l2(got[lossgrad.GRAD], expected[lossgrad.GRAD]) <= GRAD_RTOL
    features = lossgrad.features_output(choice.content_layer)
    assert relative_l2(got[features], expected[features]) <= 1e-5


def test_winograd_loss_graph_keeps_one_transformed_weight_tensor_per_layer_and_no_kernel(synthetic_weights):
    choice = LayerChoice("block4_conv2", SEED_STYLE_LAYERS, winograd=True)
    model = lossgrad.build_loss_graph(feature_graph(synthetic_weights), choice)
    names = {t.name: t for t in model.graph.initializer}
    for block, convs in ((3, 3), (4, 3), (5, 1)):
        for n in range(1, convs + 1):
            kernel = f"block{block}_conv{n}/kernel"
            assert kernel not in names
            m = lossgrad.WINOGRAD_TILES[block]
            (k, c) = synthetic_weights.layers[f"block{block}_conv{n}"][0].shape[:2]
            assert list(names[lossgrad.winograd_weights(kernel)].dims) == [(m + 2) ** 2, k, c]
    assert "block2_conv2/kernel" in names  # blocks 1-2 stay direct
    # Every Winograd layer's transform feeds both its forward and its input-gradient product (U read
    # transposed: ONNX Runtime's FusedMatMul).
    users = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node.op_type)
    for name in names:
        if name.endswith("/winograd"):
            assert users[name] == ["MatMul", "FusedMatMul"], name


def test_memory_estimate_counts_one_transformed_weight_tensor_and_the_tiles(synthetic_weights):
    cfg = TransferConfig()
    direct, fast = eval_memory_breakdown(cfg, 512, 336), eval_memory_breakdown(cfg, 512, 336, winograd=True)
    # A Winograd layer keeps its transform ((m+2)^2 values per 9), once, instead of the kernel and
    # the flipped copy the direct backward uses: the difference is what the loss graph holds.
    model = lossgrad.build_loss_graph(feature_graph(synthetic_weights),
                                      LayerChoice(cfg.content_layer, cfg.style_layers, winograd=True))
    transformed = {t.name.removesuffix("/kernel/winograd"): int(np.prod(t.dims))
                   for t in model.graph.initializer if t.name.endswith("/winograd")}
    kernels = sum(synthetic_weights.layers[layer][0].size for layer in transformed)
    assert len(transformed) == 7  # blocks 3-5 up to block5_conv1
    assert fast["weights"] - direct["weights"] == 4 * (sum(transformed.values()) - 2 * kernels)
    assert fast["activations"] > direct["activations"]  # the tiles and their products


@pytest.fixture(scope="module")
def real_problems(models_dir):
    cfg = TransferConfig(size=64, style_layers=SEED_STYLE_LAYERS, iterations=1, maxfun=1)
    return [StyleTransfer(cfg, models_dir=models_dir, provider="cpu", winograd=on).prepare(CONTENT, STYLE)
            for on in (False, True)]


def test_winograd_matches_the_direct_graph_on_real_vgg16(real_problems):
    direct, fast = real_problems
    assert "winograd" in str(fast.evaluator.session._model_path) and fast.runtime["winograd"]
    x = direct.initial_image()
    for point in (x, direct.content.astype(np.float64)):
        loss, grad = direct.loss_and_grad(point)
        fast_loss, fast_grad = fast.loss_and_grad(point)
        assert fast_loss == pytest.approx(loss, rel=LOSS_RTOL)
        assert relative_l2(fast_grad, grad) <= GRAD_RTOL


def test_winograd_is_on_for_the_cpu_by_default_and_refused_for_cuda(models_dir):
    assert StyleTransfer(TransferConfig(), provider="cpu").engine.winograd
    assert not StyleTransfer(TransferConfig(), provider="cpu", winograd=False).engine.winograd
    with pytest.raises(ConfigError, match="CPU provider"):
        StyleTransfer(TransferConfig(), provider="cuda", winograd=True)
