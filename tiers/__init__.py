"""Storage hierarchy for KV chunks: GPU pool, pinned host pool and mmap'd disk store under one
TierManager (policy), moved by Transfer (mechanism). `TieredKVStore` is the engine's entry point."""

from .layout import ChunkLayout
from .limits import TierLimits
from .manager import TierManager
from .spill import reap_stale
from .store import TieredKVStore

__all__ = ["TieredKVStore", "TierManager", "TierLimits", "ChunkLayout", "reap_stale"]
