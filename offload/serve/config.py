"""`ServeConfig`: what `offload-serve` was asked for beyond the model (address, access, caches,
queue, limits), validated once at start so a bad combination fails before the model loads."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from offload.errors import ConfigError

__all__ = ["ServeConfig", "is_loopback"]


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`: addresses no other machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


@dataclass(frozen=True)
class ServeConfig:
    """host/port: where to listen (loopback unless an api_key guards it). api_key: Bearer key every
    /v1 request must carry (compared in constant time). cache_dir: where processed prefixes persist as
    sessions (None = memory only); cache_size: bytes the cache dir may hold (LRU beyond).
    memory_slots: conversations whose KV stays in memory (LRU). queue_size: requests that may wait
    behind the running one (more get 429). max_body: request body bytes (more get 413).
    save_min_tokens: a request that prefilled at least this many tokens saves its prefix to disk.
    cors_origins: origins allowed by CORS (none by default). log_prompts: log request and answer text.
    model_name: the id /v1/models lists (None: the model directory's name)."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    cache_dir: str | None = None
    cache_size: int = 20 * 2**30
    memory_slots: int = 2
    queue_size: int = 8
    max_body: int = 32 * 2**20
    save_min_tokens: int = 256
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    log_prompts: bool = False
    model_name: str | None = None

    def __post_init__(self):
        if not is_loopback(self.host) and not self.api_key:
            raise ConfigError(f"--host {self.host} is reachable from other machines: pass --api-key KEY "
                              "(or OFFLOAD_API_KEY) too, or keep the default 127.0.0.1")  # fmt: skip
        if self.api_key is not None and (not self.api_key.strip() or not self.api_key.isprintable()):
            raise ConfigError("--api-key must be a non-empty printable string")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 0..65535, got {self.port}")
        for name in ("cache_size", "memory_slots", "max_body", "save_min_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.queue_size < 0:
            raise ConfigError(f"queue_size must be >= 0, got {self.queue_size}")
        if not isinstance(self.cors_origins, tuple):
            raise ConfigError("cors_origins must be a tuple of origins")
