"""`--session FILE`: reopen a processed document instead of prefilling it again.

A session is reused when it was saved by this model; the chat then keeps the longest common token
prefix with the new conversation, so the same document costs no prefill whatever the question. A
missing session is created after the answer. A session of another model, or a damaged one, is an
error (exit 5) rather than overwritten: it may be the only copy of someone's hours of prefill."""

from __future__ import annotations

from pathlib import Path

import click

from offload.errors import SessionError

__all__ = ["open_session", "maybe_save"]

# re-save when this many tokens were prefilled: the document changed, the session is worth updating
RESAVE_TOKENS = 256


def open_session(chat, path: str | None, verbose: bool) -> bool:
    """Load `path` into `chat` if it exists; returns whether it was loaded. Raises SessionError."""
    if path is None:
        return False
    try:
        if not Path(path).exists() and not Path(path).is_symlink():
            return False
    except OSError as e:  # an unreadable parent: neither "missing" (we would save over it) nor a crash
        raise SessionError(f"{path}: cannot look at the session ({e.strerror})") from None
    system = [m for m in chat.messages if m["role"] == "system"]
    chat.load_session(path)
    # One-shot use: the new question starts a fresh conversation over the same KV prefix.
    chat.messages = system
    if verbose:
        click.echo(f"session {path}: {chat.n_tokens:,} tokens reopened", err=True)
    return True


def maybe_save(chat, path: str | None, loaded: bool, last) -> None:
    """Save after an answer when the session is new or the prompt changed much of it."""
    if path is None or last is None:
        return
    if not loaded or last.prompt_tokens >= RESAVE_TOKENS:
        chat.save_session(path)
        click.echo(f"session saved to {path} ({chat.n_tokens:,} tokens)", err=True)
