"""SIGTERM and SIGHUP end offload-chat the way Ctrl-D does: through the normal exit path.

Python's default for both is to die on the spot, skipping every `finally`, `with` and finalizer, so
the KV spill directory (possibly GBs) stays on disk until a later run reaps it. Raising SystemExit
from the handler unwinds instead: the chat's store closes, its spill directory goes, a save in flight
removes its temp directory. The exit status is the shell's for a signal death (128 + signal number)."""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["exit_on_term_signals"]

_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _exit(signum, _frame):
    signal.signal(signum, signal.SIG_DFL)  # a second signal while cleaning up kills at once
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def exit_on_term_signals():
    """Within the block, SIGTERM/SIGHUP raise SystemExit(128 + signum); the old handlers come back
    after (tests call main() in-process). Off the main thread (where handlers cannot be set) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _exit) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
