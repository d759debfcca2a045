"""The project's exceptions: each message says what is wrong and what to do."""


class EngineError(Exception):
    """Base class for every error the engine raises on purpose."""

    def __str__(self) -> str:
        # One line whatever the message quotes: a newline or tab in a user's path or value shows escaped.
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in super().__str__())


class WeightsError(EngineError):
    """A weights file is missing, of the wrong kind, or does not hold a VGG."""


class ModelNotFoundError(EngineError):
    """No exported feature graph was found where the engine looks for one."""


class ModelFileError(EngineError):
    """An exported model or a cached graph is damaged or was not made by the engine."""


class ConfigError(EngineError):
    """A setting is invalid or conflicts with another one."""


class ImageError(EngineError):
    """An image cannot be read or written."""


class ProviderError(EngineError):
    """The requested ONNX Runtime execution provider cannot start."""


class MemoryLimitError(EngineError):
    """A run would need more memory than the machine has."""


class GraphCacheError(EngineError):
    """No folder where a derived graph could be cached is writable."""


class RunError(EngineError):
    """A run cannot start or go on: its output is in use or is an input, a checkpoint does not
    match, a loss turned non-finite, a file could not be written."""


class NonFiniteError(RunError):
    """An evaluation gave a loss or gradient that is NaN or infinite."""
