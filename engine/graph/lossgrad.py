"""Graphs derived from a feature graph, cached on disk next to it.

Both share the forward steps up to the deepest chosen layer (with the chosen pooling):

- the two **targets graphs**, each computing only what its image is needed for: the
  content graph ``image`` -> ``features.<content layer>`` (1,C,h,w), forward to the
  content layer only, run once on the content image; the style graph ``image`` ->
  ``gram.<style layer>`` (C,C), forward to the deepest style layer, run once per style
  image (ONNX Runtime runs every node of a graph whatever outputs are asked for);
- the **loss-gradient graph**: inputs ``image`` (1,3,H,W); ``content_target``
  (1,C,h,w); per style layer L a ``gram_target.L`` (C,C) and a scalar
  ``style_weight.L``; scalars ``content_weight`` and ``tv_weight``. Outputs
  ``loss``, ``content``, ``style.L`` per layer, ``tv`` (all weighted, as the seed
  adds them), ``grad`` = dloss/dimage (1,3,H,W) and ``features.<content layer>``, the
  image's features there (at the content image they are the content target, so a run
  that starts from the content takes its target from its first evaluation).

With average pooling each pool's output is multiplied by a scalar input
``pool_scale.<pool>`` (see :func:`engine.transfer` for how it is chosen), in both graphs.

With ``regions`` R > 0 (guided Grams, Gatys et al. 2017) the loss graph takes per region r
a ``region_mask.r`` (1,1,H,W) instead of one style target per layer, and per style layer a
``gram_target.L.r`` and ``style_weight.L.r``; the style graph takes a ``style_mask``
(1,1,H,W) and its ``gram.L`` are of the masked features. Masks reach each layer's
resolution by a 2x2 average per pool. With ``tileable`` every convolution pads circularly
(the image is a torus) and the total variation wraps.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import helper

from ..errors import GraphCacheError
from ..models import vgg
from ..models.export import INPUT_NAME, model_metadata, read_feature_model, write_model
from ..models.integrity import verified_metadata
from ..models.store import cache_dir
from .builder import GraphBuilder
from .ops import RULES, Step
from .terms import content_term, gram, guided_style_term, halve_mask, style_term, tv_term, tv_term_wrapped
from .winograd import transformed_weights

# Part of the cache key: bump it whenever the graphs this module builds change.
GRAPH_VERSION = "7"
# The derived graphs one cache folder may hold (see trim_cache), in MiB; the variable overrides it.
GRAPH_CACHE_ENV = "NST_GRAPH_CACHE_MB"
DEFAULT_GRAPH_CACHE_MB = 2048

CONTENT_TARGET, CONTENT_WEIGHT, TV_WEIGHT = "content_target", "content_weight", "tv_weight"
LOSS, CONTENT, TV, GRAD = "loss", "content", "tv", "grad"
STYLE_MASK = "style_mask"


def _region(name: str, region: int | None) -> str:
    return name if region is None else f"{name}.{region}"


def gram_target(layer: str, region: int | None = None) -> str:
    return _region(f"gram_target.{layer}", region)


def style_weight(layer: str, region: int | None = None) -> str:
    return _region(f"style_weight.{layer}", region)


def region_mask(region: int) -> str:
    return f"region_mask.{region}"


def style_output(layer: str) -> str:
    return f"style.{layer}"


def features_output(layer: str) -> str:
    return f"features.{layer}"


def gram_output(layer: str) -> str:
    return f"gram.{layer}"


def pool_scale(pool: str) -> str:
    return f"pool_scale.{pool}"


@dataclass(frozen=True)
class LayerChoice:
    content_layer: str
    style_layers: tuple[str, ...]
    pooling: str = "max"
    regions: int = 0         # guided Grams: the number of masked regions (0: one Gram per layer, unmasked)
    tileable: bool = False   # circular padding and a wrapping total variation
    winograd: bool = False   # the loss graph's convs of WINOGRAD_TILES' blocks as Winograd F(m, 3) (CPU, not tileable)

    def deepest(self, arch: str, layers: tuple[str, ...] | None = None) -> str:
        """The deepest of ``layers`` (default: all chosen layers)."""
        order = vgg.conv_layer_names(arch)
        return max(layers or [self.content_layer, *self.style_layers], key=order.index)


def forward_steps(feature_model: onnx.ModelProto, choice: LayerChoice, deepest: str | None = None,
                  winograd: bool = False) -> list[Step]:
    """The feature graph's nodes up to ``deepest`` (default: the deepest chosen layer), with the
    chosen pooling; with ``winograd``, the convs of WINOGRAD_TILES' blocks as WinogradConv steps."""
    arch = model_metadata(feature_model)["architecture"]
    deepest = deepest or choice.deepest(arch)
    kernels = {t.name: t for t in feature_model.graph.initializer}
    steps = []
    for node in feature_model.graph.node:
        if node.op_type not in RULES:
            raise ValueError(f"no backward rule for {node.op_type} (node {node.name})")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x, y, params = node.input[0], node.output[0], tuple(node.input[1:])
        block = int(y[len("block"):].split("_")[0]) if y.startswith("block") else 0
        if node.op_type == "Conv" and choice.tileable:  # Winograd's tiles assume zero padding: never on a torus
            steps.append(Step("CircularConv", x, y, params, attrs))
        elif node.op_type == "Conv" and winograd and block in WINOGRAD_TILES:
            out_channels, in_channels = kernels[params[0]].dims[:2]
            steps.append(Step("WinogradConv", x, y, (winograd_weights(params[0]), *params[1:]),
                              {"m": WINOGRAD_TILES[block], "in_channels": in_channels, "out_channels": out_channels}))
        elif node.op_type == "MaxPool" and choice.pooling == "avg":
            steps.append(Step("AveragePool", x, f"{y}/avg", params, attrs))
            steps.append(Step("Mul", f"{y}/avg", y, (pool_scale(y),)))
        else:
            steps.append(Step(node.op_type, x, y, params, attrs))
        if y == deepest:
            return steps
    raise ValueError(f"the feature graph has no output {deepest}")


# Output tile size m of the Winograd F(m, 3) convs, by VGG block. Blocks 1-2 (few channels,
# large maps) are no faster as Winograd, their transforms being memory-bound. F(4,3) in blocks 3-4
# took 0.78-0.82 of the direct graph's time at 256 and 512 px where F(2,3) in blocks 3-5 took
# 0.94-1.0; block 5 (11x16 px at 256) is as fast with F(2,3) as with F(4,3), for less weight memory.
WINOGRAD_TILES = {3: 4, 4: 4, 5: 2}


def winograd_weights(kernel: str) -> str:
    return f"{kernel}/winograd"


def pools(arch: str, choice: LayerChoice, deepest: str | None = None) -> list[str]:
    """The pool scale inputs of the steps forward to ``deepest`` (default: the deepest chosen
    layer): with average pooling, one per pool before it; none with max pooling."""
    if choice.pooling != "avg":
        return []
    block = vgg.conv_layer(arch, deepest or choice.deepest(arch)).block
    return [pool_scale(f"block{n}_pool") for n in range(1, block)]


def _forward(feature_model: onnx.ModelProto, choice: LayerChoice, deepest: str | None = None,
             winograd: bool = False) -> tuple[GraphBuilder, list[Step]]:
    b = GraphBuilder()
    b.input(INPUT_NAME, [1, 3, "height", "width"])
    steps = forward_steps(feature_model, choice, deepest, winograd)
    for scale in pools(model_metadata(feature_model)["architecture"], choice, deepest):
        b.input(scale, [])
    weights = {t.name: t for t in feature_model.graph.initializer}
    for step in steps:
        for param in step.params:
            if param in weights:
                b.initializer(weights[param])
        if step.op_type == "WinogradConv":  # its kernel's transform, instead of the kernel
            kernel = step.params[0].removesuffix("/winograd")
            b.initializer(transformed_weights(weights[kernel], step.params[0], step.attrs["m"]))
        RULES[step.op_type].forward(b, step)
    return b, steps


def _channels(feature_model: onnx.ModelProto, layer: str) -> int:
    return vgg.conv_layer(model_metadata(feature_model)["architecture"], layer).out_channels


def _masks_at_layers(b: GraphBuilder, mask: str, arch: str, layers: tuple[str, ...]) -> dict[str, str]:
    """``mask`` (1,1,H,W) brought to each layer's resolution, one 2x2 average per pool before it."""
    by_factor = {1: mask}
    for layer in layers:
        factor = 1
        while factor < vgg.conv_layer(arch, layer).downsampling:
            if 2 * factor not in by_factor:
                by_factor[2 * factor] = halve_mask(b, by_factor[factor])
            factor *= 2
    return {layer: by_factor[vgg.conv_layer(arch, layer).downsampling] for layer in layers}


def _finish(b: GraphBuilder, feature_model: onnx.ModelProto, choice: LayerChoice, kind: str) -> onnx.ModelProto:
    meta = model_metadata(feature_model)
    metadata = {**meta, "graph": kind, "content_layer": choice.content_layer,
                "style_layers": json.dumps(list(choice.style_layers)), "pooling": choice.pooling,
                "winograd": json.dumps(WINOGRAD_TILES if choice.winograd and kind == "loss" else {}),
                "graph_version": GRAPH_VERSION, **_variant(choice)}
    model = b.model(f"{meta['architecture']}_{kind}", metadata)
    onnx.checker.check_model(model)
    return model


def build_content_graph(feature_model: onnx.ModelProto, choice: LayerChoice) -> onnx.ModelProto:
    """The content target: the content layer's features, forward to that layer only."""
    b, _ = _forward(feature_model, choice, choice.content_layer)
    channels = _channels(feature_model, choice.content_layer)
    b.output(features_output(choice.content_layer), choice.content_layer, [1, channels, "h", "w"])
    return _finish(b, feature_model, choice, "content")


def build_style_graph(feature_model: onnx.ModelProto, choice: LayerChoice) -> onnx.ModelProto:
    """The style targets: each style layer's Gram matrix (of the features times the style mask,
    with regions), forward to the deepest style layer only."""
    arch = model_metadata(feature_model)["architecture"]
    b, _ = _forward(feature_model, choice, choice.deepest(arch, choice.style_layers))
    masks = {}
    if choice.regions:
        masks = _masks_at_layers(b, b.input(STYLE_MASK, [1, 1, "height", "width"]), arch, choice.style_layers)
    for layer in choice.style_layers:
        channels = _channels(feature_model, layer)
        features = b.op("Mul", layer, masks[layer]) if masks else layer
        b.output(gram_output(layer), gram(b, features)[0], [channels, channels])
    return _finish(b, feature_model, choice, "style")


def build_loss_graph(feature_model: onnx.ModelProto, choice: LayerChoice) -> onnx.ModelProto:
    b, steps = _forward(feature_model, choice, winograd=choice.winograd)
    seeds: dict[str, list[str]] = {}
    channels = _channels(feature_model, choice.content_layer)
    target = b.input(CONTENT_TARGET, [1, channels, "content_height", "content_width"])
    content, seed = content_term(b, choice.content_layer, target, b.input(CONTENT_WEIGHT, []))
    seeds.setdefault(choice.content_layer, []).append(seed)
    style_losses = []
    arch = model_metadata(feature_model)["architecture"]
    masks = [_masks_at_layers(b, b.input(region_mask(r), [1, 1, "height", "width"]), arch, choice.style_layers)
             for r in range(choice.regions)]
    for layer in choice.style_layers:
        channels = _channels(feature_model, layer)
        if choice.regions:
            loss, seed = guided_style_term(b, layer, [
                (masks[r][layer], b.input(gram_target(layer, r), [channels, channels]),
                 b.input(style_weight(layer, r), [])) for r in range(choice.regions)])
        else:
            loss, seed = style_term(b, layer, b.input(gram_target(layer), [channels, channels]),
                                    b.input(style_weight(layer), []))
        b.output(style_output(layer), loss, [])
        style_losses.append(loss)
        seeds.setdefault(layer, []).append(seed)
    tv, tv_grad = (tv_term_wrapped if choice.tileable else tv_term)(b, INPUT_NAME, b.input(TV_WEIGHT, []))

    # Reverse mode: walk the steps backwards, summing the gradients reaching each tensor.
    grads: dict[str, str] = {}
    for step in reversed(steps):
        pending = seeds.pop(step.y, []) + ([grads[step.y]] if step.y in grads else [])
        if not pending:
            continue
        dy = pending[0]
        for other in pending[1:]:
            dy = b.op("Add", dy, other)
        dx = RULES[step.op_type].backward(b, step, dy)
        grads[step.x] = b.op("Add", grads[step.x], dx) if step.x in grads else dx

    total = content
    for loss in [*style_losses, tv]:
        total = b.op("Add", total, loss)
    b.output(LOSS, total, [])
    b.output(CONTENT, content, [])
    b.output(TV, tv, [])
    b.output(GRAD, b.op("Add", grads[INPUT_NAME], tv_grad), [1, 3, "height", "width"])
    b.output(features_output(choice.content_layer), choice.content_layer,
             [1, _channels(feature_model, choice.content_layer), "content_height", "content_width"])
    return _finish(b, feature_model, choice, "loss")


@dataclass(frozen=True)
class Graphs:
    content: Path
    style: Path
    loss: Path
    pools: tuple[str, ...]   # pool scale inputs the loss graph takes (avg pooling only; the targets
    #                          graphs take those of the pools before their deepest layer)
    model_metadata: dict[str, str]   # the feature graph's: architecture, weights checksum and source


def graph_paths(model_path: Path, choice: LayerChoice) -> Graphs:
    """The cached content, style and loss graphs for this model and layer choice (built when absent).

    The key holds the model's weights checksum, the layers, the pooling and
    GRAPH_VERSION, so a changed model or choice never reuses a stale graph. Writing
    a graph trims its folder (see ``trim_cache``); finding one marks it used.
    """
    meta = verified_metadata(model_path)  # the model unchanged since verified: read only to build a graph
    feature_model = None if meta else read_feature_model(model_path)
    meta = meta or model_metadata(feature_model)
    key = json.dumps([GRAPH_VERSION, meta["weights_sha256"], choice.content_layer,
                      list(choice.style_layers), choice.pooling] + ([_variant(choice)] if _variant(choice) else []))
    stem = f"{meta['architecture']}-g{GRAPH_VERSION}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    builders = {"content": build_content_graph, "style": build_style_graph, "loss": build_loss_graph}
    names = {kind: f"{stem}-{kind}.onnx" for kind in builders}
    if choice.winograd:  # the targets graphs stay direct: run once, Winograd gains them nothing (README)
        tiles = "".join(f"{block}{m}" for block, m in WINOGRAD_TILES.items())
        names["loss"] = f"{stem}-winograd{tiles}-loss.onnx"
    folders = [model_path.parent / "graphs", cache_dir() / "graphs"]
    paths = {}
    for kind, name in names.items():
        found = [folder / name for folder in folders if (folder / name).is_file()]
        if found:
            paths[kind] = found[0]
            _touch(found[0])
            continue
        if feature_model is None:
            feature_model = read_feature_model(model_path)
        model = builders[kind](feature_model, choice)
        folder = next((f for f in folders if _writable(f)), None)
        if folder is None:
            raise GraphCacheError(
                f"cannot write the {kind} graph to {' or '.join(map(str, folders))} (not writable): "
                "set XDG_CACHE_HOME to a writable folder, or copy the model into one and give it with --models-dir")
        paths[kind] = write_model(model, folder / name)
        trim_cache(folder, keep=set(names.values()))
    return Graphs(paths["content"], paths["style"], paths["loss"], tuple(pools(meta["architecture"], choice)), meta)


# "-targets.onnx": the single targets graph of GRAPH_VERSION 2 and before.
_GRAPH_SUFFIXES = ("-loss.onnx", "-content.onnx", "-style.onnx", "-targets.onnx")


def _variant(choice: LayerChoice) -> dict[str, str]:
    """The regions and tileable settings where not the default (the default graphs keep their names)."""
    return {**({"regions": str(choice.regions)} if choice.regions else {}),
            **({"tileable": "true"} if choice.tileable else {})}


def graph_cache_limit() -> int:
    """The bytes of derived graphs a cache folder may hold: $NST_GRAPH_CACHE_MB (default 2048) MiB."""
    text = os.environ.get(GRAPH_CACHE_ENV, "").strip()
    if not text:
        return DEFAULT_GRAPH_CACHE_MB << 20
    if not text.isdigit():
        raise GraphCacheError(f"{GRAPH_CACHE_ENV}={text!r} is not a whole number of MiB: set it to e.g. 2048, "
                              "or unset it for the default")
    return int(text) << 20


def trim_cache(folder: Path, keep: set[str]) -> None:
    """Remove from ``folder`` the graphs of other GRAPH_VERSIONs (no engine after them reads them), then
    this version's least recently used ones until the rest fit in ``graph_cache_limit()``; never a
    graph named in ``keep`` (the choice being opened) nor a file being written. Each layer choice
    adds 100-240 MB of graphs (their weights included), so without a bound a server whose clients
    choose layers, or a user trying many, would fill the disk. An engine that finds a graph
    removed builds it again."""
    limit = graph_cache_limit()
    current = []
    for path in folder.glob("*.onnx"):
        if path.name.startswith(".") or not path.name.endswith(_GRAPH_SUFFIXES):
            continue
        try:
            stat = path.stat()
        except OSError:
            continue
        if f"-g{GRAPH_VERSION}-" not in path.name:
            _remove(path)
        else:
            current.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in current)
    for _, size, path in sorted(current):
        if total <= limit:
            break
        if path.name not in keep and _remove(path):
            total -= size


def _remove(path: Path) -> bool:
    try:
        path.unlink(missing_ok=True)
        return True
    except OSError:  # another user's file in a shared cache: theirs to remove
        return False


def _touch(path: Path) -> None:
    """Mark a cached graph as just used (its modification time), where the folder allows it."""
    try:
        os.utime(path)
    except OSError:
        pass


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)
