"""Neural style transfer (Gatys et al., CVPR 2016) as an ONNX engine.

The public API, what an embedding application imports::

    from engine import StyleTransfer, TransferConfig
    result = StyleTransfer(TransferConfig(size=256)).run("content.jpg", "style.jpg", output="out.png")
"""
__version__ = "0.1.0"

from .config import Pooling, Provider, TransferConfig
from .errors import (ConfigError, EngineError, ImageError, MemoryLimitError, ModelFileError, ModelNotFoundError,
                     NonFiniteError, ProviderError, RunError, WeightsError)
from .models.export import export_model
from .models.weights import VGGWeights, load_weights
from .presets import PRESETS, preset_config
from .run.engine import Engine
from .run.events import Evaluated, IterationDone, Prepared
from .run.problem import Problem
from .run.records import RunStatus, TransferResult
from .run.transfer import StyleTransfer

__all__ = [
    "ConfigError", "Engine", "EngineError", "Evaluated", "ImageError", "IterationDone", "MemoryLimitError",
    "ModelFileError", "ModelNotFoundError", "NonFiniteError", "PRESETS", "Pooling", "Prepared", "Problem",
    "Provider", "ProviderError", "RunError", "RunStatus", "StyleTransfer", "TransferConfig", "TransferResult",
    "VGGWeights", "WeightsError", "export_model", "load_weights", "preset_config",
]
