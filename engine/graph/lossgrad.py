"""The loss-gradient graph: derived from a feature graph, cached on disk next to it.

Inputs: ``image`` (1,3,H,W); ``content_target`` (1,C,h,w); per style layer L a
``gram_target.L`` (C,C) and a scalar ``style_weight.L``; scalars ``content_weight``
and ``tv_weight``. Outputs: ``loss``, ``content``, ``style.L`` per layer, ``tv``
(all weighted, as the seed adds them) and ``grad`` = dloss/dimage (1,3,H,W).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import onnx
from onnx import helper

from .. import vgg
from ..export import INPUT_NAME, model_metadata, write_model
from ..models import cache_dir
from .builder import GraphBuilder
from .ops import RULES, Step
from .terms import content_term, style_term, tv_term

# Part of the cache key: bump it whenever the graph this module builds changes.
GRAPH_VERSION = "1"

CONTENT_TARGET, CONTENT_WEIGHT, TV_WEIGHT = "content_target", "content_weight", "tv_weight"
LOSS, CONTENT, TV, GRAD = "loss", "content", "tv", "grad"


def gram_target(layer: str) -> str:
    return f"gram_target.{layer}"


def style_weight(layer: str) -> str:
    return f"style_weight.{layer}"


def style_output(layer: str) -> str:
    return f"style.{layer}"


def forward_steps(feature_model: onnx.ModelProto, deepest: str, pooling: str) -> list[Step]:
    """The feature graph's nodes up to the one producing ``deepest``, as steps."""
    steps = []
    for node in feature_model.graph.node:
        op_type = "AveragePool" if node.op_type == "MaxPool" and pooling == "avg" else node.op_type
        if op_type not in RULES:
            raise ValueError(f"no backward rule for {node.op_type} (node {node.name})")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        steps.append(Step(op_type, node.input[0], node.output[0], tuple(node.input[1:]), attrs))
        if node.output[0] == deepest:
            return steps
    raise ValueError(f"the feature graph has no output {deepest}")


def build_loss_graph(feature_model: onnx.ModelProto, content_layer: str,
                     style_layers: tuple[str, ...], pooling: str = "max") -> onnx.ModelProto:
    meta = model_metadata(feature_model)
    arch = meta["architecture"]
    layers = {layer.name: layer for layer in vgg.conv_layers(arch)}
    chosen = [content_layer, *style_layers]
    deepest = max(chosen, key=list(layers).index)
    steps = forward_steps(feature_model, deepest, pooling)

    b = GraphBuilder()
    image = b.input(INPUT_NAME, [1, 3, "height", "width"])
    weights = {t.name: t for t in feature_model.graph.initializer}
    for step in steps:
        for param in step.params:
            b.initializer(weights[param])
        RULES[step.op_type].forward(b, step)

    seeds: dict[str, list[str]] = {}
    channels = layers[content_layer].out_channels
    target = b.input(CONTENT_TARGET, [1, channels, "content_height", "content_width"])
    content, seed = content_term(b, content_layer, target, b.input(CONTENT_WEIGHT, []))
    seeds.setdefault(content_layer, []).append(seed)
    style_losses = []
    for layer in style_layers:
        channels = layers[layer].out_channels
        loss, seed = style_term(b, layer, b.input(gram_target(layer), [channels, channels]),
                                b.input(style_weight(layer), []))
        b.output(style_output(layer), loss, [])
        style_losses.append(loss)
        seeds.setdefault(layer, []).append(seed)
    tv, tv_grad = tv_term(b, image, b.input(TV_WEIGHT, []))

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
    b.output(GRAD, b.op("Add", grads[image], tv_grad), [1, 3, "height", "width"])
    metadata = {**meta, "content_layer": content_layer, "style_layers": json.dumps(list(style_layers)),
                "pooling": pooling, "graph_version": GRAPH_VERSION}
    model = b.model(f"{arch}_loss_gradient", metadata)
    onnx.checker.check_model(model)
    return model


def loss_graph_path(model_path: Path, content_layer: str, style_layers: tuple[str, ...], pooling: str) -> Path:
    """The cached loss graph for this model and layer choice (built and written when absent).

    The key holds the model's weights checksum, the layers, the pooling and
    GRAPH_VERSION, so a changed model or choice never reuses a stale graph.
    """
    feature_model = onnx.load(model_path)
    meta = model_metadata(feature_model)
    key = json.dumps([GRAPH_VERSION, meta["weights_sha256"], content_layer, list(style_layers), pooling])
    name = f"{meta['architecture']}-loss-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
    folders = [model_path.parent / "graphs", cache_dir() / "graphs"]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    model = build_loss_graph(feature_model, content_layer, style_layers, pooling)
    for folder in folders:
        if _writable(folder):
            return write_model(model, folder / name)
    raise OSError(f"cannot write the loss graph to any of {', '.join(map(str, folders))}")


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)
