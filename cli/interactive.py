"""The interactive loop: read a line, answer it, slash commands, Ctrl-C / Ctrl-D."""

from __future__ import annotations

import click

from offload.decode_choice import decode_label
from offload.errors import OffloadError

from .documents import read_document, with_documents
from .speed import speed_line
from .stream import answer

__all__ = ["repl", "SLASH_HELP"]

SLASH_HELP = """commands:
  /help            this list
  /file PATH       add a document; it goes with your next message
  /save FILE       save the conversation (KV included) to a session
  /load FILE       reopen a saved session (no prefill)
  /stats           tokens in context and the last speed line
  /clear           forget the conversation
  /exit            leave (or Ctrl-D); Ctrl-C stops an answer"""


def _command(chat, line: str, state: dict) -> bool:
    """Run one slash command; False means leave."""
    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd == "/exit":
        return False
    if cmd == "/help":
        click.echo(SLASH_HELP, err=True)
    elif cmd == "/clear":
        chat.clear()
        state["documents"] = []
        click.echo("conversation cleared", err=True)
    elif cmd in ("/file", "/save", "/load") and not arg:
        click.echo(f"{cmd} needs a path", err=True)
    elif cmd == "/file":
        name, text = read_document(arg)
        state["documents"].append((name, text))
        n = len(chat.model.tokenizer(text)["input_ids"])
        click.echo(f"added {name} ({n:,} tokens); it goes with your next message", err=True)
    elif cmd == "/save":
        chat.save_session(arg)
        click.echo(f"saved {chat.n_tokens:,} tokens to {arg}", err=True)
    elif cmd == "/load":
        chat.load_session(arg)
        state["documents"] = []
        click.echo(f"loaded {chat.n_tokens:,} tokens from {arg}", err=True)
    elif cmd == "/stats":
        last = state.get("last")
        click.echo(f"context {chat.n_tokens:,} / {chat.model.n_ctx:,} tokens, "
                   f"{len(chat.messages)} messages", err=True)
        if last is not None:
            click.echo(speed_line(last, decode=decode_label(chat.model.config)), err=True)
    else:
        click.echo(f"unknown command {cmd}\n{SLASH_HELP}", err=True)
    return True


def repl(chat, documents: list, opts: dict) -> None:
    """Chat until /exit or Ctrl-D. Errors in a turn (a bad /file, a turn that overflows the context)
    are printed and the conversation goes on."""
    click.echo("offload-chat: type a message; /help for commands, Ctrl-D to leave", err=True)
    state = {"documents": list(documents), "last": None}
    while True:
        try:
            click.echo("> ", err=True, nl=False)
            line = input().strip()
        except EOFError:
            click.echo("", err=True)
            return
        except KeyboardInterrupt:
            click.echo("", err=True)
            continue
        if not line:
            continue
        try:
            if line.startswith("/"):
                if not _command(chat, line, state):
                    return
                continue
            text = with_documents(state["documents"], line)
            state["last"] = answer(chat, text, opts) or state["last"]
            state["documents"] = []  # sent: kept only if the turn failed before it started
        except OffloadError as e:
            click.echo(f"error: {e}", err=True)
        except KeyboardInterrupt:  # Ctrl-C outside the answer stream (a slow /load, /save)
            click.echo("\n[stopped]", err=True)
