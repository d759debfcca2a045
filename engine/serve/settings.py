"""The server's options, validated once: where it listens, who may talk to it, how big uploads may be."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..config import Provider
from ..errors import ConfigError
from ..io.images import MAX_MEGAPIXELS

TOKEN_ENV = "NST_TOKEN"
MIN_TOKEN_LENGTH = 16
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/nst/serve, else ~/.local/share/nst/serve: jobs are data a user keeps, not a cache."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "nst" / "serve"


def is_loopback(host: str) -> bool:
    if host.strip("[]") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings:
    """host/port: where to listen (loopback unless a token is set); token: the shared secret every
    request must carry (None: $NST_TOKEN, else none, allowed only on loopback); data_dir: the jobs'
    folders; max_upload_mb: largest uploaded file; max_pixels: largest decoded image and output;
    max_queued: most jobs waiting (a submit beyond is refused); workers: jobs run at once (None: 1, or with ``ray_address`` as many as the cluster holds);
    models_dir, provider, threads: as for ``Engine``; allowed_origins: the public origins
    (scheme://host[:port]) of a reverse proxy in front, whose pages may use the API; ray_address:
    run the jobs on a Ray cluster (auto, host:6379, ray://host:10001, or local to start one)."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path | None = None
    token: str | None = None
    max_upload_mb: float = 20.0
    max_pixels: int = 25_000_000
    workers: int | None = None
    max_queued: int = 100
    models_dir: Path | None = None
    provider: Provider = Provider.AUTO
    threads: int | None = None
    allowed_origins: tuple[str, ...] = ()
    ray_address: str | None = None

    def __post_init__(self) -> None:
        token = self.token if self.token is not None else os.environ.get(TOKEN_ENV) or None
        object.__setattr__(self, "token", token)
        object.__setattr__(self, "data_dir", Path(self.data_dir) if self.data_dir else default_data_dir())
        object.__setattr__(self, "provider", Provider(self.provider))
        if token is not None and len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"the token is {len(token)} characters, too short to guess-proof: use at least "
                              f"{MIN_TOKEN_LENGTH}, e.g. python -c 'import secrets; print(secrets.token_urlsafe())'")
        if token is None and not is_loopback(self.host):
            raise ConfigError(f"refusing to listen on {self.host} without a token: anyone who reaches it could run "
                              f"jobs and read results; pass --token or set {TOKEN_ENV}, or keep --host 127.0.0.1")
        origins = tuple(origin.rstrip("/") for origin in self.allowed_origins)
        for origin in origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise ConfigError(f"allowed origin {origin!r} is not scheme://host[:port], e.g. https://example.org")
        object.__setattr__(self, "allowed_origins", origins)
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}")
        if not self.max_upload_mb > 0:
            raise ConfigError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if not 256 <= self.max_pixels <= MAX_MEGAPIXELS * 1e6:
            raise ConfigError(f"max_pixels must be between 256 and {MAX_MEGAPIXELS * 1e6:.0f} (the engine's image "
                              f"limit), got {self.max_pixels}")
        if self.max_queued < 1:
            raise ConfigError(f"max_queued must be at least 1, got {self.max_queued}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1 (or unset for all cores), got {self.threads}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
