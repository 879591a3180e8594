"""Reading the documents a user hands to `offload-chat -f` and framing them into the first turn."""

from __future__ import annotations

import sys
from pathlib import Path

from offload.errors import InputError

__all__ = ["read_document", "with_documents"]

_TEXT_SUFFIXES = {"", ".txt", ".md", ".markdown", ".rst", ".text", ".log", ".csv", ".json", ".py"}


def read_document(path: str) -> tuple[str, str]:
    """(name, text) of a UTF-8 text file; `-` reads standard input. Anything else is an InputError."""
    if path == "-":
        data = sys.stdin.buffer.read()
        name = "stdin"
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise InputError(f"document {path!r} does not exist")
        if p.is_dir():
            raise InputError(f"document {path!r} is a directory; pass text files (-f a.md -f b.txt)")
        if p.suffix.lower() not in _TEXT_SUFFIXES:
            raise InputError(
                f"document {path!r} is not a text or markdown file ({p.suffix}); convert it to UTF-8 text first"
            )
        data, name = p.read_bytes(), p.name
    if b"\x00" in data:
        raise InputError(f"document {name!r} looks binary (NUL bytes); offload reads UTF-8 text only")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"document {name!r} is not valid UTF-8 (byte {e.start}); re-encode it as UTF-8") from None
    if not text.strip():
        raise InputError(f"document {name!r} is empty")
    return name, text


def with_documents(documents: list[tuple[str, str]], message: str) -> str:
    """The first user turn: each document under its name, then the user's message."""
    if not documents:
        return message
    blocks = [f"Document: {name}\n\n{text.strip()}" for name, text in documents]
    return "\n\n---\n\n".join(blocks) + "\n\n---\n\n" + message
