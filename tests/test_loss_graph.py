"""The loss-gradient ONNX graph against an independent float64 reference, and its cache.

The reference (tests/loss_reference.py) is the seed's loss written in numpy
with explicit loops, and its gradient by hand; the graph must reproduce every
weighted term and dloss/dimage, on a synthetic VGG16-shaped network with random
weights and on the real VGG16 with real photos.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import loss_reference as ref
import vgg_reference
from engine.errors import GraphCacheError
from engine.io import images
from engine.models.export import export, feature_graph
from engine.graph import lossgrad
from engine.graph.lossgrad import LayerChoice
from engine.models.weights import VGGWeights, load_weights

ROOT = Path(__file__).resolve().parent.parent

LOSS_RTOL = 1e-4        # each weighted term and the total
GRAD_REL_L2 = 1e-3      # ||grad - ref|| / ||ref||

# Ops ONNX Runtime's CUDA provider has kernels for, at the types the graph uses. Anything
# else would drop nodes to the CPU mid-graph (a copy both ways per evaluation).
CUDA_OPS = {"Conv", "ConvTranspose", "Relu", "MaxPool", "AveragePool", "Resize", "Equal", "Greater", "Cast", "Mul",
            "Add", "Sub", "Slice", "Pad", "Transpose", "MatMul", "ReduceSum", "Reshape", "Squeeze",
            "Unsqueeze", "Identity", "Concat"}
# Shape-computing or data-dependent ops: they break CUDA graph capture or run on the CPU.
FORBIDDEN_OPS = {"Shape", "Size", "ConstantOfShape", "NonZero", "MaxUnpool", "Range"}

SEED_STYLE_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
# Content layer also a style layer; style layers out of forward order.
MIXED = LayerChoice("block3_conv1", ("block3_conv1", "block1_conv2", "block4_conv1", "block2_conv1"))
MIXED_WEIGHTS = (1000.0, 100.0, 12.0, 1.0)


# ---------------------------------------------------------------- helpers


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def pool_scales_for(model: onnx.ModelProto, value: float = 1.7) -> dict[str, float]:
    """A scale for each pool scale input the graph takes (none with max pooling), keyed by pool."""
    names = [i.name for i in model.graph.input if i.name.startswith("pool_scale.")]
    return {name.removeprefix("pool_scale."): value for name in names}


def compare(model: onnx.ModelProto, weights, choice: LayerChoice, x, content, style,
            content_weight=100.0, style_weights=None, tv_weight=200.0, pool_scales=None):
    """Run the loss graph and the reference on the same problem; return (graph outputs, ref terms, ref grad)."""
    style_weights = style_weights or (1.0,) * len(choice.style_layers)
    layers = ref.vgg_layers(weights)
    content_target, grams = ref.targets(layers, content[0], style[0], choice.content_layer,
                                        choice.style_layers, choice.pooling, pool_scales)
    terms, grad = ref.loss_and_grad(layers, x[0], content_target, grams, content_weight, style_weights,
                                    tv_weight, choice.content_layer, choice.style_layers, choice.pooling,
                                    pool_scales)
    acts, _ = ref.forward(layers, x[0], choice.deepest("vgg16"), choice.pooling, pool_scales)
    feeds = {
        "image": np.ascontiguousarray(x, np.float32),
        lossgrad.CONTENT_TARGET: content_target[None].astype(np.float32),
        lossgrad.CONTENT_WEIGHT: np.array(content_weight, np.float32),
        lossgrad.TV_WEIGHT: np.array(tv_weight, np.float32),
    }
    for layer, weight in zip(choice.style_layers, style_weights):
        feeds[lossgrad.gram_target(layer)] = grams[layer].astype(np.float32)
        feeds[lossgrad.style_weight(layer)] = np.array(
            ref.style_coefficient(weight, len(choice.style_layers), acts[layer].shape), np.float32)
    for pool, scale in (pool_scales or {}).items():
        feeds[lossgrad.pool_scale(pool)] = np.array(scale, np.float32)
    sess = session(model)
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    return outputs, terms, grad


def assert_matches_reference(outputs, terms, grad, choice: LayerChoice):
    expected_terms = {"loss", "content", "tv", *(f"style.{layer}" for layer in choice.style_layers)}
    assert expected_terms <= set(terms)
    for name in sorted(expected_terms):
        value = outputs[name]
        assert value.shape == (), f"{name} is not a scalar: {value.shape}"
        assert float(value) == pytest.approx(terms[name], rel=LOSS_RTOL), name
    assert outputs["grad"].shape == (1, *grad.shape)
    assert ref.relative_l2(outputs["grad"][0], grad) <= GRAD_REL_L2


def graph_ops(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


def non_initializer_inputs(model: onnx.ModelProto) -> list[str]:
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def synthetic_weights() -> VGGWeights:
    return VGGWeights("vgg16", vgg_reference.random_weights("vgg16", seed=3), "synthetic-3")


@pytest.fixture(scope="module")
def synthetic_features(synthetic_weights) -> onnx.ModelProto:
    return feature_graph(synthetic_weights)


@pytest.fixture(scope="module")
def vgg16_weights(vgg16_onnx) -> VGGWeights:
    return load_weights(vgg16_onnx, "vgg16")


@pytest.fixture(scope="module")
def vgg16_features(vgg16_onnx) -> onnx.ModelProto:
    return onnx.load(vgg16_onnx)


@pytest.fixture(scope="module")
def photos() -> tuple[np.ndarray, np.ndarray]:
    """The bundled content photo and style painting at 48x32, preprocessed by the engine."""
    size = (48, 32)
    content = images.preprocess(images.load_image(ROOT / "examples" / "content.jpg"), size)
    style = images.preprocess(images.load_image(ROOT / "examples" / "style.jpg"), size)
    return content, style


@pytest.fixture
def synthetic_model(tmp_path, synthetic_weights) -> Path:
    """An exported synthetic feature graph alone in a fresh models folder."""
    return export(synthetic_weights, tmp_path / "models" / "vgg16.onnx")


# ---------------------------------------------------------------- the reference itself


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_reference_gradient_matches_finite_differences(pooling):
    # A tiny two-block network: the reference's hand-written backward pass must agree
    # with central differences of its own forward loss.
    rng = np.random.default_rng(11)
    layers = [("block1_conv1", rng.standard_normal((3, 3, 3, 3)), rng.standard_normal(3) * 0.1, False),
              ("block1_conv2", rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4) * 0.1, True),
              ("block2_conv1", rng.standard_normal((3, 4, 3, 3)), rng.standard_normal(3) * 0.1, False)]
    scales = {"block1_pool": 1.3} if pooling == "avg" else None
    x, content, style = (rng.standard_normal((3, 6, 8)) for _ in range(3))
    style_layers = ("block2_conv1", "block1_conv1")
    content_target, grams = ref.targets(layers, content, style, "block1_conv2", style_layers, pooling, scales)
    args = (content_target, grams, 0.7, (2.0, 5.0), 0.3, "block1_conv2", style_layers, pooling, scales)
    _, grad = ref.loss_and_grad(layers, x, *args)
    eps = 1e-6
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        plus = ref.loss_and_grad(layers, x + step, *args)[0]["loss"]
        minus = ref.loss_and_grad(layers, x - step, *args)[0]["loss"]
        numeric[index] = (plus - minus) / (2 * eps)
    assert ref.relative_l2(grad, numeric) < 1e-6


# ---------------------------------------------------------------- graph vs reference


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_loss_graph_matches_reference_on_synthetic_vgg(synthetic_weights, synthetic_features, pooling):
    choice = LayerChoice(MIXED.content_layer, MIXED.style_layers, pooling)
    model = lossgrad.build_loss_graph(synthetic_features, choice)
    rng = np.random.default_rng(0)
    x, content, style = (rng.standard_normal((1, 3, 32, 48)).astype(np.float32) for _ in range(3))
    scales = pool_scales_for(model)
    assert bool(scales) == (pooling == "avg")
    outputs, terms, grad = compare(model, synthetic_weights.layers, choice, x, content, style,
                                   style_weights=MIXED_WEIGHTS, pool_scales=scales)
    assert_matches_reference(outputs, terms, grad, choice)


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_loss_graph_matches_reference_on_real_vgg16_and_photos(vgg16_weights, vgg16_features, photos, pooling):
    choice = LayerChoice("block4_conv2", SEED_STYLE_LAYERS, pooling)
    model = lossgrad.build_loss_graph(vgg16_features, choice)
    content, style = photos
    # An image part way from the seed's noise to the photo.
    noise = np.random.default_rng(1).uniform(0, 255, content.shape) - 128.0
    x = (0.5 * content + 0.5 * noise).astype(np.float32)
    outputs, terms, grad = compare(model, vgg16_weights.layers, choice, x, content, style,
                                   content_weight=100.0, style_weights=(1000.0, 100.0, 12.0, 1.0, 1.0),
                                   tv_weight=200.0, pool_scales=pool_scales_for(model, 1.2))
    assert_matches_reference(outputs, terms, grad, choice)
    assert all(terms[name] > 0 for name in ("content", "tv", "style.block1_conv1"))


def test_loss_graph_of_a_layer_below_the_deepest_style_layer_stops_at_the_deepest(synthetic_features):
    # Content at block1_conv2, one style layer at block2_conv2: no step past block2_conv2.
    choice = LayerChoice("block1_conv2", ("block2_conv2",))
    model = lossgrad.build_loss_graph(synthetic_features, choice)
    kernels = {name for node in model.graph.node for name in node.input if name.endswith("/kernel")}
    assert not any(name.startswith(("block3", "block4", "block5")) for name in kernels)


# ---------------------------------------------------------------- graph structure


@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("choice", [
    MIXED, LayerChoice("block4_conv2", SEED_STYLE_LAYERS),
    LayerChoice("block4_conv2", SEED_STYLE_LAYERS, regions=2, tileable=True)], ids=["mixed", "seed", "regions-tiles"])
def test_graphs_use_only_cuda_ops_and_no_shape_ops(synthetic_features, choice, pooling):
    choice = LayerChoice(choice.content_layer, choice.style_layers, pooling, choice.regions, choice.tileable)
    for model in (lossgrad.build_loss_graph(synthetic_features, choice),
                  lossgrad.build_content_graph(synthetic_features, choice),
                  lossgrad.build_style_graph(synthetic_features, choice)):
        ops = graph_ops(model)
        assert ops <= CUDA_OPS, f"ops without a CUDA kernel: {sorted(ops - CUDA_OPS)}"
        assert not ops & FORBIDDEN_OPS


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_loss_graph_has_the_documented_inputs_and_outputs(synthetic_features, pooling):
    choice = LayerChoice(MIXED.content_layer, MIXED.style_layers, pooling)
    model = lossgrad.build_loss_graph(synthetic_features, choice)
    inputs = non_initializer_inputs(model)
    expected = {"image", lossgrad.CONTENT_TARGET, lossgrad.CONTENT_WEIGHT, lossgrad.TV_WEIGHT}
    expected |= {lossgrad.gram_target(layer) for layer in choice.style_layers}
    expected |= {lossgrad.style_weight(layer) for layer in choice.style_layers}
    if pooling == "avg":  # block1..3 pools lie before block4_conv1, the deepest layer
        expected |= {lossgrad.pool_scale(f"block{n}_pool") for n in (1, 2, 3)}
    assert set(inputs) == expected
    assert len(inputs) == len(expected)
    outputs = {o.name: o for o in model.graph.output}
    assert set(outputs) == {lossgrad.LOSS, lossgrad.CONTENT, lossgrad.TV, lossgrad.GRAD,
                            lossgrad.features_output(choice.content_layer),
                            *(lossgrad.style_output(layer) for layer in choice.style_layers)}
    by_name = {i.name: i for i in model.graph.input}
    image_dims = [d.dim_value or d.dim_param for d in by_name["image"].type.tensor_type.shape.dim]
    grad_dims = [d.dim_value or d.dim_param for d in outputs[lossgrad.GRAD].type.tensor_type.shape.dim]
    assert image_dims[:2] == [1, 3] and grad_dims == image_dims
    for name in (lossgrad.LOSS, lossgrad.CONTENT, lossgrad.TV):
        assert len(outputs[name].type.tensor_type.shape.dim) == 0, f"{name} is not declared a scalar"
    onnx.checker.check_model(model)


def _kernels(model: onnx.ModelProto) -> set[str]:
    return {name.split("/")[0] for node in model.graph.node if node.op_type == "Conv"
            for name in node.input[1:2]}


def test_targets_graphs_compute_only_what_their_image_is_needed_for(synthetic_features):
    # The seed's choice: content at block4_conv2, style layers up to block5_conv1.
    choice = LayerChoice("block4_conv2", SEED_STYLE_LAYERS)
    content = lossgrad.build_content_graph(synthetic_features, choice)
    style = lossgrad.build_style_graph(synthetic_features, choice)
    assert [o.name for o in content.graph.output] == [lossgrad.features_output("block4_conv2")]
    assert [o.name for o in style.graph.output] == [lossgrad.gram_output(layer) for layer in SEED_STYLE_LAYERS]
    assert "MatMul" not in graph_ops(content)  # no Gram matrix computed from the content image
    assert _kernels(content) == {f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 3)) for c in range(1, n + 1)
                                 } | {"block4_conv1", "block4_conv2"}
    assert "block5_conv1" in _kernels(style) and "block4_conv3" in _kernels(style)
    assert "block5_conv2" not in _kernels(style)


def test_one_loss_graph_serves_any_image_size(synthetic_weights, synthetic_features):
    choice = LayerChoice("block2_conv1", ("block1_conv1", "block2_conv1"))
    model = lossgrad.build_loss_graph(synthetic_features, choice)
    rng = np.random.default_rng(5)
    for h, w in ((16, 32), (48, 16)):
        x, content, style = (rng.standard_normal((1, 3, h, w)).astype(np.float32) for _ in range(3))
        outputs, terms, grad = compare(model, synthetic_weights.layers, choice, x, content, style)
        assert_matches_reference(outputs, terms, grad, choice)


# ---------------------------------------------------------------- the cache on disk


def test_graph_cache_second_call_reuses_files_without_rebuilding(synthetic_model, monkeypatch):
    choice = LayerChoice("block4_conv2", SEED_STYLE_LAYERS)
    first = lossgrad.graph_paths(synthetic_model, choice)
    paths = (first.loss, first.content, first.style)
    assert all(path.is_file() for path in paths)
    assert first.loss.parent == synthetic_model.parent / "graphs"
    before = [path.stat() for path in paths]
    time.sleep(0.01)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a cached graph was rebuilt")

    monkeypatch.setattr(lossgrad, "build_loss_graph", no_rebuild)
    monkeypatch.setattr(lossgrad, "build_content_graph", no_rebuild)
    monkeypatch.setattr(lossgrad, "build_style_graph", no_rebuild)
    second = lossgrad.graph_paths(synthetic_model, choice)
    assert (second.loss, second.content, second.style) == paths
    after = [path.stat() for path in paths]
    assert [s.st_ino for s in after] == [s.st_ino for s in before]  # the same files (a rebuild replaces them)
    # ... marked as just used, for the cache's trimming.
    assert all(a.st_mtime_ns > b.st_mtime_ns for a, b in zip(after, before))


def _choice_files(graphs: lossgrad.Graphs) -> set[str]:
    return {graphs.content.name, graphs.style.name, graphs.loss.name}


def test_the_graph_cache_keeps_to_its_limit_removing_the_least_recently_used(synthetic_model, monkeypatch):
    graphs_dir = synthetic_model.parent / "graphs"
    a = lossgrad.graph_paths(synthetic_model, LayerChoice("block2_conv1", ("block1_conv1",)))
    one_choice = sum((graphs_dir / name).stat().st_size for name in _choice_files(a))
    # Room for two choices of about this size (b and c differ from a in their style layers only).
    monkeypatch.setattr(lossgrad, "graph_cache_limit", lambda: int(2.5 * one_choice))
    time.sleep(0.01)
    b = lossgrad.graph_paths(synthetic_model, LayerChoice("block2_conv1", ("block1_conv2",)))
    time.sleep(0.01)
    lossgrad.graph_paths(synthetic_model, LayerChoice("block2_conv1", ("block1_conv1",)))  # a: used again
    time.sleep(0.01)
    c = lossgrad.graph_paths(synthetic_model, LayerChoice("block2_conv1", ("block1_conv2", "block1_conv1")))
    names = set(files_in(graphs_dir))
    assert _choice_files(a) | _choice_files(c) <= names
    assert not _choice_files(b) & names  # the least recently used
    assert sum((graphs_dir / name).stat().st_size for name in names) <= 2.5 * one_choice
    # A limit below one choice still keeps the choice being opened, whole.
    monkeypatch.setattr(lossgrad, "graph_cache_limit", lambda: 0)
    d = lossgrad.graph_paths(synthetic_model, LayerChoice("block3_conv1", ("block1_conv1",)))
    assert set(files_in(graphs_dir)) == _choice_files(d)
    # A file being written (atomic_path's temp name) is never removed.
    writing = graphs_dir / f".{d.loss.name}.x1y2.tmp.onnx"
    writing.write_bytes(b"half")
    lossgrad.graph_paths(synthetic_model, LayerChoice("block3_conv2", ("block1_conv1",)))
    assert writing.is_file()


def test_the_graph_cache_limit_is_set_in_mib_by_nst_graph_cache_mb(monkeypatch):
    monkeypatch.delenv(lossgrad.GRAPH_CACHE_ENV, raising=False)
    assert lossgrad.graph_cache_limit() == 2048 << 20
    monkeypatch.setenv(lossgrad.GRAPH_CACHE_ENV, "300")
    assert lossgrad.graph_cache_limit() == 300 << 20
    monkeypatch.setenv(lossgrad.GRAPH_CACHE_ENV, "2GB")
    with pytest.raises(GraphCacheError, match="NST_GRAPH_CACHE_MB='2GB' is not a whole number of MiB"):
        lossgrad.graph_cache_limit()


def test_writing_a_graph_removes_the_graphs_of_other_graph_versions(synthetic_model, monkeypatch):
    graphs_dir = synthetic_model.parent / "graphs"
    with monkeypatch.context() as patch:
        patch.setattr(lossgrad, "GRAPH_VERSION", "older")
        older = lossgrad.graph_paths(synthetic_model, LayerChoice("block2_conv1", ("block1_conv1",)))
    legacy = graphs_dir / "vgg16-0123456789abcdef-loss.onnx"  # named before versions were in the name
    legacy.write_bytes(b"old")
    (graphs_dir / "vgg16-g2-0123456789abcdef-targets.onnx").write_bytes(b"old")
    unrelated = graphs_dir / "notes.onnx"
    unrelated.write_bytes(b"not a graph of ours")
    current = lossgrad.graph_paths(synthetic_model, LayerChoice("block3_conv1", ("block1_conv1",)))
    another = lossgrad.graph_paths(synthetic_model, LayerChoice("block4_conv1", ("block1_conv1",)))
    names = set(files_in(graphs_dir))
    legacy_targets = graphs_dir / "vgg16-g2-0123456789abcdef-targets.onnx"  # version 2's one targets graph
    kinds = ("loss", "content", "style")
    assert {getattr(g, kind).name for g in (current, another) for kind in kinds} | {"notes.onnx"} <= names
    assert not {getattr(older, kind).name for kind in kinds} & names
    assert not {legacy.name, legacy_targets.name} & names


def test_graph_cache_key_holds_the_layers_and_the_pooling(synthetic_model):
    base = LayerChoice("block4_conv2", SEED_STYLE_LAYERS)
    variants = [
        base,
        LayerChoice("block4_conv1", SEED_STYLE_LAYERS),
        LayerChoice("block4_conv2", SEED_STYLE_LAYERS[:4]),
        LayerChoice("block4_conv2", tuple(reversed(SEED_STYLE_LAYERS))),  # order decides output order
        LayerChoice("block4_conv2", SEED_STYLE_LAYERS, "avg"),
    ]
    paths = [lossgrad.graph_paths(synthetic_model, choice).loss for choice in variants]
    assert len({p.name for p in paths}) == len(variants)
    avg = onnx.load(paths[-1])
    assert any(i.name.startswith("pool_scale.") for i in avg.graph.input)
    assert "AveragePool" in graph_ops(avg) and "MaxPool" not in graph_ops(avg)


def test_graph_cache_key_holds_the_model_weights(tmp_path, synthetic_model):
    other_weights = VGGWeights("vgg16", vgg_reference.random_weights("vgg16", seed=4), "synthetic-4")
    other = export(other_weights, tmp_path / "other-models" / "vgg16.onnx")
    choice = LayerChoice("block2_conv2", ("block1_conv1", "block2_conv1"))
    mine = lossgrad.graph_paths(synthetic_model, choice).loss
    theirs = lossgrad.graph_paths(other, choice).loss
    assert mine.name != theirs.name
    # A model whose weights changed in place must not pick up its old cached graph.
    export(other_weights, synthetic_model)
    replaced = lossgrad.graph_paths(synthetic_model, choice).loss
    assert replaced.name == theirs.name and replaced != mine
    kernel = {t.name: t for t in onnx.load(replaced).graph.initializer}["block1_conv1/kernel"]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(kernel), other_weights.layers["block1_conv1"][0])


def test_graph_cache_writes_atomically(synthetic_model, monkeypatch):
    choice = LayerChoice("block3_conv1", ("block1_conv1",))
    graphs_dir = synthetic_model.parent / "graphs"
    real_save = onnx.save_model

    def save_then_fail(model, path, *args, **kwargs):
        real_save(model, path, *args, **kwargs)
        with open(path, "ab") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        lossgrad.graph_paths(synthetic_model, choice)
    assert not [name for name in files_in(graphs_dir) if name.endswith(".onnx") and not name.startswith(".")]
    assert not [name for name in files_in(graphs_dir) if "tmp" in name]
    monkeypatch.setattr(onnx, "save_model", real_save)
    graphs = lossgrad.graph_paths(synthetic_model, choice)
    assert files_in(graphs_dir) == sorted([graphs.loss.name, graphs.content.name, graphs.style.name])
    onnx.checker.check_model(onnx.load(graphs.loss))
