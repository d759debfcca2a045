"""Neural style transfer (Gatys et al., CVPR 2016) as an ONNX engine.

The public API: what an embedding application imports.
"""
from .errors import (ConfigError, EngineError, ImageError, MemoryLimitError, ModelNotFoundError,
                     ProviderError, WeightsError)
from .export import export_model
from .weights import VGGWeights, load_weights

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "EngineError", "ImageError", "MemoryLimitError", "ModelNotFoundError",
    "ProviderError", "VGGWeights", "WeightsError", "export_model", "load_weights",
]
