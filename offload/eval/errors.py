"""The eval harness's error: bad task, length, mode or policy, or a sample that cannot be built.
Derives from `OffloadError`, so the CLI prints its message without a traceback."""

from __future__ import annotations

from ..errors import OffloadError

__all__ = ["EvalError"]


class EvalError(OffloadError, ValueError):
    """An eval request that cannot be run as given; the message says what to change."""

    exit_code = 2
