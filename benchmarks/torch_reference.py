"""The PyTorch reference the benchmark checks and times the engine against (the bench extra)."""
from __future__ import annotations

from typing import Any

import numpy as np

from engine.config import Pooling, StyleNormalization, TransferConfig
from engine.errors import ConfigError
from engine.models import vgg


class TorchLoss:
    """The engine's loss in PyTorch eager mode, float32, on the same conv weights.

    Same terms as the loss-gradient graph: ``content_weight * sum((F - T)^2)``; per
    style layer ``weight / len(layers) / (4 (h w)^2) * sum((G - G_t)^2)`` with
    ``G = F F^T`` (F as (C, h w)); the seed's total variation with its slicing; 2x2
    max pooling between blocks. Its targets are computed here, in PyTorch, from the
    same preprocessed images, so a match checks the targets too.
    """

    def __init__(self, config: TransferConfig, weights: dict[str, tuple[np.ndarray, np.ndarray]], threads: int):
        import torch

        if config.pooling is not Pooling.MAX:
            raise ConfigError("the PyTorch reference covers max pooling only: use a max-pooling preset or --no-torch")
        torch.set_num_threads(threads)
        self.torch = torch
        self.config = config
        names = vgg.conv_layer_names(config.convnet)
        self.deepest = max([config.content_layer, *config.style_layers], key=names.index)
        self.layers = []
        for layer in vgg.conv_layers(config.convnet):
            w, b = weights[layer.name]
            self.layers.append((layer, torch.from_numpy(np.array(w, np.float32)),
                                torch.from_numpy(np.array(b, np.float32))))
            if layer.name == self.deepest:
                break
        self.shape: tuple[int, ...] = ()

    def features(self, x):
        """{layer: (1, C, h, w)} at the content and style layers."""
        F = self.torch.nn.functional
        wanted = {self.config.content_layer, *self.config.style_layers}
        out, block = {}, 1
        for layer, w, b in self.layers:
            if layer.block != block:
                x, block = F.max_pool2d(x, 2), layer.block
            x = F.relu(F.conv2d(x, w, b, padding=1))
            if layer.name in wanted:
                out[layer.name] = x
        return out

    @staticmethod
    def gram(f):
        flat = f.reshape(f.shape[1], -1)
        return flat @ flat.T

    def set_targets(self, content: np.ndarray, styles: list[np.ndarray]) -> None:
        """Targets and per-layer weights as ``StyleTransfer.prepare`` derives them."""
        torch, cfg = self.torch, self.config
        self.shape = tuple(content.shape)
        height, width = content.shape[2], content.shape[3]
        blend = np.asarray(cfg.style_blend or [1.0] * len(styles), np.float64)
        blend = blend / blend.sum()
        with torch.no_grad():
            self.content_target = self.features(torch.from_numpy(np.ascontiguousarray(content, np.float32)))[
                cfg.content_layer].clone()
            grams = {layer: 0.0 for layer in cfg.style_layers}
            for weight, style in zip(blend, styles):
                feats = self.features(torch.from_numpy(np.ascontiguousarray(style, np.float32)))
                positions = (width * height) / (style.shape[2] * style.shape[3])
                for layer in cfg.style_layers:
                    grams[layer] = grams[layer] + float(weight * positions) * self.gram(feats[layer]).double()
        self.gram_targets = {layer: g.float() for layer, g in grams.items()}
        self.coefficients = {}
        for layer, weight in zip(cfg.style_layers, cfg.style_weights):
            info = vgg.conv_layer(cfg.convnet, layer)
            positions = (width // info.downsampling) * (height // info.downsampling)
            if cfg.style_normalization is StyleNormalization.GATYS:
                weight *= 1e3 / info.out_channels ** 2
            self.coefficients[layer] = weight / len(cfg.style_layers) / (4.0 * positions ** 2)

    def terms(self, x):
        """The weighted terms at x (a (1,3,H,W) tensor): loss, content, style.<layer>, tv."""
        cfg = self.config
        feats = self.features(x)
        terms = {"content": cfg.content_weight * ((feats[cfg.content_layer] - self.content_target) ** 2).sum()}
        for layer in cfg.style_layers:
            diff = self.gram(feats[layer]) - self.gram_targets[layer]
            terms[f"style.{layer}"] = self.coefficients[layer] * (diff ** 2).sum()
        a = x[:, :, :-1, :-1] - x[:, :, 1:, :-1]
        c = x[:, :, :-1, :-1] - x[:, :, :-1, 1:]
        terms["tv"] = cfg.tv_weight * (a ** 2 + c ** 2).sum()
        total = terms["content"]
        for name, value in terms.items():
            if name != "content":
                total = total + value
        terms["loss"] = total
        return terms

    def loss_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """As ``Problem.loss_and_grad``: x float64 in, (loss, float64 gradient of x's shape) out."""
        xt = self.torch.from_numpy(np.asarray(x, np.float32).reshape(self.shape)).requires_grad_(True)
        loss = self.terms(xt)["loss"]
        loss.backward()
        return float(loss.detach()), xt.grad.numpy().astype(np.float64).reshape(np.shape(x))

    def evaluate_terms(self, x: np.ndarray) -> dict[str, float]:
        with self.torch.no_grad():
            t = self.terms(self.torch.from_numpy(np.asarray(x, np.float32).reshape(self.shape)))
        return {k: float(v) for k, v in t.items()}


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def check_torch(problem, reference: TorchLoss, x: np.ndarray) -> dict[str, Any]:
    """Relative differences of the loss, each term and the gradient (L2) between engine and PyTorch."""
    engine_terms = problem.terms(x)
    loss, grad = problem.loss_and_grad(x)
    torch_loss, torch_grad = reference.loss_and_grad(x)
    torch_terms = reference.evaluate_terms(x)
    names = ["content", "tv", *(f"style.{l}" for l in problem.config.style_layers)]
    return {
        "engine_loss": loss, "torch_loss": torch_loss,
        "loss_rel_err": _relative(torch_loss, loss),
        "terms_rel_err": {n: _relative(torch_terms[n], engine_terms[n]) for n in names},
        "grad_rel_err": float(np.linalg.norm(torch_grad - grad) / max(np.linalg.norm(grad), 1e-30)),
    }


