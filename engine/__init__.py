"""Neural style transfer (Gatys et al., CVPR 2016) as an ONNX engine.

The public API, what an embedding application imports::

    from engine import StyleTransfer, TransferConfig
    result = StyleTransfer(TransferConfig(size=256)).run("content.jpg", "style.jpg", output="out.png")
"""
__version__ = "0.1.0"

import importlib

# Each public name, by the module that holds it. They are imported on first use, so that
# `nst` has its signal handlers in place before onnxruntime and scipy load (engine.run.signals).
_PUBLIC = {
    ".config": ("Pooling", "Provider", "TransferConfig"),
    ".errors": ("ConfigError", "EngineError", "GraphCacheError", "ImageError", "MemoryLimitError", "ModelFileError",
                "ModelNotFoundError", "NonFiniteError", "ProviderError", "RunError", "WeightsError"),
    ".models.export": ("export_model",),
    ".models.weights": ("VGGWeights", "load_weights"),
    ".presets": ("PRESETS", "preset_config"),
    ".run.engine": ("Engine",),
    ".run.events": ("Evaluated", "IterationDone", "Prepared"),
    ".run.problem": ("Problem",),
    ".run.records": ("RunStatus", "TransferResult"),
    ".run.transfer": ("StyleTransfer",),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})
