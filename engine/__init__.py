"""Neural style transfer (Gatys et al., CVPR 2016) as an ONNX engine.

The public API, what an embedding application imports::

    from engine import StyleTransfer, TransferConfig
    result = StyleTransfer(TransferConfig(size=256)).run("content.jpg", "style.jpg", output="out.png")
"""
__version__ = "0.1.0"

from .config import Pooling, Provider, TransferConfig
from .errors import (ConfigError, EngineError, GraphCacheError, ImageError, MemoryLimitError, ModelFileError,
                     ModelNotFoundError, ProviderError, WeightsError)
from .models.export import export_model
from .models.weights import VGGWeights, load_weights
from .presets import PRESETS, preset_config
from .run.transfer import Evaluated, IterationDone, Prepared, Problem, StyleTransfer, TransferResult

__all__ = [
    "ConfigError", "EngineError", "Evaluated", "GraphCacheError", "ImageError", "IterationDone", "MemoryLimitError",
    "ModelFileError", "ModelNotFoundError", "PRESETS", "Pooling", "Prepared", "Problem", "Provider", "ProviderError",
    "StyleTransfer", "TransferConfig", "TransferResult", "VGGWeights", "WeightsError", "export_model",
    "load_weights", "preset_config",
]
