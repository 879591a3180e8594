"""Typed errors. Every error a user can cause derives from `OffloadError`; the CLI maps each class to
an exit code and prints its message without a traceback."""

from __future__ import annotations

__all__ = [
    "OffloadError",
    "ConfigError",
    "InputError",
    "ModelNotFoundError",
    "ContextOverflowError",
    "PlanError",
    "SessionError",
    "ModelFileError",
    "DiskFullError",
]


class OffloadError(Exception):
    """Base class: a problem the user can fix; the message says how."""

    exit_code = 1


class ConfigError(OffloadError, ValueError):
    """An `OffloadConfig` field (or a CLI flag mapped onto it) is out of range."""

    exit_code = 2


class InputError(OffloadError, ValueError):
    """A document or prompt offload cannot read (missing, not UTF-8 text, binary)."""

    exit_code = 2


class PlanError(OffloadError):
    """The memory plan does not fit the GPU/host/disk limits."""

    exit_code = 3


class ContextOverflowError(OffloadError):
    """Prompt plus `max_new_tokens` exceed the context window; raised before any compute."""

    exit_code = 4

    def __init__(self, n_prompt_tokens: int, n_ctx: int, max_new_tokens: int = 0):
        self.n_prompt_tokens = n_prompt_tokens
        self.n_ctx = n_ctx
        self.max_new_tokens = max_new_tokens
        need = n_prompt_tokens + max_new_tokens
        super().__init__(
            f"the prompt has {n_prompt_tokens:,} tokens and asks for up to {max_new_tokens:,} new ones "
            f"({need:,} in all), more than the context of {n_ctx:,} tokens; offload never truncates. "
            f"Raise the context (OffloadConfig(ctx=...) / --ctx {need}) or shorten the input."
        )

    def __reduce__(self):  # keep picklable with the custom __init__
        return (type(self), (self.n_prompt_tokens, self.n_ctx, self.max_new_tokens))


class SessionError(OffloadError):
    """A saved session cannot be used: wrong model, wrong format, damaged or missing files."""

    exit_code = 5


class ModelNotFoundError(OffloadError, FileNotFoundError):
    """The model path does not exist locally (offload never downloads)."""

    exit_code = 6


class ModelFileError(ModelNotFoundError):
    """The model path exists but its files are not a usable model (not a GGUF, a truncated file,
    a config.json that is not JSON, no weights): same exit code as a missing model, since the fix is
    the same (point -m at a complete local model)."""


class DiskFullError(OffloadError):
    """The disk filled up while offload wrote KV (spill files or a session). Nothing half-written is
    kept: the spill is truncated back / the session's temp directory removed."""

    exit_code = 7
