"""``StyleTransfer``: one config bound to an engine, the API the README documents."""
from __future__ import annotations

from pathlib import Path

from ..config import Provider, TransferConfig
from ..errors import ConfigError
from .engine import Engine, ImageSource, Styles, scale_plan, sizes_for
from .events import Callback
from .problem import Problem
from .records import TransferResult


class StyleTransfer:
    """Gatys et al. style transfer with the settings of ``config``.

    Runs on ``engine`` when given (shared: its models, graphs and sessions serve every
    StyleTransfer bound to it), else on an engine of its own made from ``models_dir``,
    ``provider``, ``threads``, ``tf32``, ``cuda_graph`` and ``winograd`` (see ``Engine``).
    """

    def __init__(self, config: TransferConfig | None = None, models_dir: str | Path | None = None,
                 provider: Provider | str = Provider.AUTO, threads: int | None = None,
                 tf32: bool = True, cuda_graph: bool = True, engine: Engine | None = None,
                 winograd: bool | None = None):
        if config is not None and not isinstance(config, TransferConfig):
            raise ConfigError(f"config must be a TransferConfig, got {type(config).__name__} {config!r}: build one "
                              "with TransferConfig(...) or preset_config(name, ...)")
        if engine is not None and not isinstance(engine, Engine):
            raise ConfigError(f"engine must be an Engine, got {type(engine).__name__}")
        self.config = config or TransferConfig()
        self.engine = engine or Engine(models_dir, provider, threads, tf32, cuda_graph, winograd)

    def prepare(self, content: ImageSource, style: Styles, size: int | None = None) -> Problem:
        """See ``Engine.prepare``."""
        return self.engine.prepare(self.config, content, style, size)

    def run(self, content: ImageSource, style: Styles, output: str | Path | None = None,
            callback: Callback | None = None, cancel=None, resume: bool = False) -> TransferResult:
        """See ``Engine.run``."""
        return self.engine.run(self.config, content, style, output, callback, cancel, resume)

    def sizes_for(self, content_size: tuple[int, int], size: int | None) -> tuple[tuple[int, int], tuple[int, int]]:
        return sizes_for(self.config, content_size, size)

    def scale_plan(self, content_size: tuple[int, int]) -> tuple[list[int], tuple[int, ...]]:
        """The longest edge at each scale, coarse to fine, and the iterations at each."""
        return scale_plan(self.config, content_size)
