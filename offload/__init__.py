"""offload: long-context local LLM runtime (sparse attention over a GPU / host / disk KV hierarchy)."""

from . import _offline  # noqa: F401  (must run before transformers is imported)
from .config import OffloadConfig, SparseConfig
from .errors import (
    ConfigError,
    ContextOverflowError,
    DiskFullError,
    InputError,
    ModelFileError,
    ModelNotFoundError,
    OffloadError,
    PlanError,
    SessionError,
)
from .chat import Chat
from .generate import GenerationResponse, generate, stream_generate
from .loading import load_model
from .model import OffloadModel

__all__ = [
    "OffloadConfig",
    "SparseConfig",
    "OffloadModel",
    "load_model",
    "generate",
    "stream_generate",
    "GenerationResponse",
    "Chat",
    "OffloadError",
    "ConfigError",
    "ContextOverflowError",
    "InputError",
    "ModelNotFoundError",
    "ModelFileError",
    "DiskFullError",
    "PlanError",
    "SessionError",
]
