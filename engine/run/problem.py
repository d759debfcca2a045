"""One content/style pair at one size, bound to a loss-gradient evaluator."""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from ..config import Init, TransferConfig
from ..errors import NonFiniteError, RunError
from ..graph import lossgrad
from ..io import colors, images
from ..models import vgg
from ..runtime.sessions import LossGradEvaluator


class Problem:
    """One content/style pair at one size, bound to a loss-gradient session.

    ``loss_and_grad(x)`` takes x (1, 3, H, W) or flat, in the seed's convention
    (BGR, mean subtracted, 0-255), and returns the total loss and dloss/dx with
    x's shape, as float64 for scipy. One graph run per call. Any other shape
    (an (H, W, 3) or (1, H, W, 3) image included) is a RunError; a loss or gradient
    that is not finite is a NonFiniteError (``last_finite``: the last x whose were finite).
    A Problem belongs to one run: it holds that run's buffers, so one thread at a time.

    ``content_target``: None when the evaluator holds the content target; else what computes
    it. Then the first evaluation, when it is at the content image itself, takes the target
    from the features it computes there (its content term and that term's gradient are zero
    at the content image, so it runs with content weight 0): a run that starts from the
    content never runs the content image through the network a second time.
    """

    def __init__(self, config: TransferConfig, evaluator: LossGradEvaluator, content: np.ndarray,
                 styles: list[np.ndarray], output_size: tuple[int, int], colour_source: Image.Image | None,
                 content_target: Callable[[], np.ndarray] | None = None):
        self.config = config
        self.evaluator = evaluator
        self._content_target = content_target
        self.content = content
        self.styles = styles
        self.shape = content.shape
        self.output_size = output_size
        self.evaluations = 0
        self.runtime: dict = {"provider": self.provider}
        self.last_finite: np.ndarray | None = None
        self._colour_source = colour_source
        self._recent: list[tuple[np.ndarray, dict[str, float]]] = []

    @property
    def provider(self) -> str:
        return self.evaluator.provider

    def loss_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        self._check_shape(x)
        terms, grad = self._evaluate(x)
        self.evaluations += 1
        x = np.array(x, copy=True)
        loss = terms[lossgrad.LOSS]
        if not (np.isfinite(loss) and np.isfinite(grad).all()):
            what = "loss" if not np.isfinite(loss) else "gradient"
            error = NonFiniteError(f"evaluation {self.evaluations} at {self.shape[3]}x{self.shape[2]} px gave a "
                                   f"non-finite {what} (NaN or infinity)")
            error.what = what
            raise error
        self.last_finite = x
        # L-BFGS returns one of its recent points; remembering them spares re-evaluating it.
        self._recent = [*self._recent[-3:], (x, terms)]
        return loss, grad.astype(np.float64).reshape(np.shape(x))

    def _check_shape(self, x: np.ndarray) -> None:
        shape = np.shape(x)
        if tuple(shape) == tuple(self.shape) or (len(shape) == 1 and shape[0] == np.prod(self.shape)):
            return
        raise RunError(f"loss_and_grad takes the image as an array of shape {tuple(self.shape)} (N, C, H, W: "
                       f"BGR channels first, mean subtracted, 0-255) or flat of {int(np.prod(self.shape))} values, "
                       f"got shape {tuple(shape)}")

    def terms(self, x: np.ndarray) -> dict[str, float]:
        """The weighted loss terms at x: loss, content, style (summed), tv, and style.<layer>."""
        for seen, terms in reversed(self._recent):
            if np.array_equal(seen, x):
                return _summary(terms)
        terms, _ = self._evaluate(x)
        return _summary(terms)

    def _evaluate(self, x: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        if self._content_target is None:
            return self.evaluator(x)
        if not np.array_equal(np.reshape(x, self.shape), self.content):
            self.evaluator.set_input(lossgrad.CONTENT_TARGET, self._content_target())
            self._content_target = None
            return self.evaluator(x)
        weight = self.evaluator.input(lossgrad.CONTENT_WEIGHT)
        self.evaluator.set_input(lossgrad.CONTENT_WEIGHT, np.zeros_like(weight))
        try:
            terms, grad = self.evaluator(x)
            self.evaluator.set_input(lossgrad.CONTENT_TARGET,
                                     self.evaluator.output(lossgrad.features_output(self.config.content_layer)))
            self._content_target = None
        finally:
            self.evaluator.set_input(lossgrad.CONTENT_WEIGHT, weight)
        return terms, grad

    def initial_image(self) -> np.ndarray:
        """The start image of ``config.init``: the seed's uniform(0, 255) - 128 noise (from
        ``config.seed``), the content, the (first) style, or an image file."""
        init = self.config.init
        if init == Init.NOISE.value:
            return np.random.default_rng(self.config.seed).uniform(0, 255, self.shape) - 128.0
        if init == Init.CONTENT.value:
            return self.content.astype(np.float64)
        if init == Init.STYLE.value:
            style = self.styles[0].astype(np.float64)
            # With a style_scale the style is fed at its own size; the start needs the working size.
            return style if style.shape == tuple(self.shape) else resize_x(style, self.shape)
        size = (self.shape[3], self.shape[2])
        image = images.load_image(init, max(size), self.config.max_megapixels)
        return images.preprocess(image, size).astype(np.float64)

    def bounds(self) -> list[tuple[float, float]]:
        """Per-pixel box constraints keeping every channel within 0..255 (BGR, mean subtracted)."""
        pixels = self.shape[2] * self.shape[3]
        return [(-mean, 255.0 - mean) for mean in vgg.MEAN_BGR for _ in range(pixels)]

    def to_rgb(self, x: np.ndarray) -> np.ndarray:
        """x in the seed's convention -> float32 (H, W, 3) RGB 0..255 at the output size."""
        bgr = np.asarray(x, np.float32).reshape(self.shape)[0] + np.asarray(vgg.MEAN_BGR, np.float32)[:, None, None]
        rgb = np.clip(bgr[::-1].transpose(1, 2, 0), 0, 255)
        if (rgb.shape[1], rgb.shape[0]) != self.output_size:
            rgb = np.stack([np.asarray(Image.fromarray(rgb[..., c]).resize(self.output_size, Image.Resampling.LANCZOS))
                            for c in range(3)], axis=-1).clip(0, 255)
        if self._colour_source is not None:
            rgb = colors.recombine_luminance(rgb, self._colour_source)
        return rgb

    def to_image(self, x: np.ndarray) -> np.ndarray:
        """x in the seed's convention -> uint8 (H, W, 3) RGB at the output size."""
        return np.round(self.to_rgb(x)).astype(np.uint8)


def _summary(terms: dict[str, float]) -> dict[str, float]:
    style = {k: v for k, v in terms.items() if k.startswith("style.")}
    return {"loss": terms[lossgrad.LOSS], "content": terms[lossgrad.CONTENT],
            "style": float(sum(style.values())), "tv": terms[lossgrad.TV], **style}


def resize_x(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resize an image in the seed's convention (1,3,h,w) to ``shape``, channel by channel."""
    size = (shape[3], shape[2])
    planes = [np.asarray(Image.fromarray(np.asarray(plane, np.float32)).resize(size, Image.Resampling.BICUBIC))
              for plane in x.reshape(3, x.shape[2], x.shape[3])]
    return np.stack(planes)[None].astype(np.float64)
