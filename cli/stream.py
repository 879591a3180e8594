"""Streaming one answer to the terminal: the prefill progress bar, tokens on stdout, the speed line."""

from __future__ import annotations

import sys
import time

import click

from offload.decode_choice import decode_label

from .speed import speed_line

__all__ = ["answer", "PrefillProgress"]


class PrefillProgress:
    """Prefill progress on stderr (a terminal only): tokens done/total, tok/s, ETA."""

    def __init__(self, enabled: bool):
        self.enabled, self.t0 = enabled, time.perf_counter()

    def __call__(self, done: int, total: int, n_tokens: int) -> None:
        if not self.enabled or n_tokens < 256:
            return
        el = time.perf_counter() - self.t0
        eta = el / done * (total - done)
        tps = n_tokens * done / total / max(el, 1e-9)
        click.echo(f"\rprefill {n_tokens * done // total:,}/{n_tokens:,} tok, {tps:,.0f} tok/s, "
                   f"{el:.1f} s, ETA {eta:.1f} s   ", err=True, nl=False)
        if done == total:  # clear the bar: the answer and then the speed line follow
            click.echo("\r" + " " * 79 + "\r", err=True, nl=False)


def answer(chat, text: str, opts: dict, show_speed: bool = True):
    """Stream one answer to stdout. Ctrl-C stops it and keeps the conversation. Returns the last
    GenerationResponse (None if interrupted before the first token)."""
    last, prompt_s, t0 = None, None, time.perf_counter()
    stream = None
    try:
        stream = chat.stream(text, progress=PrefillProgress(sys.stderr.isatty()), **opts)
        for r in stream:
            if last is None:
                prompt_s = time.perf_counter() - t0
            last = r
            if r.text:
                click.echo(r.text, nl=False)
                sys.stdout.flush()
    except KeyboardInterrupt:
        if stream is not None:
            stream.close()
        click.echo("")
        click.echo("[stopped]", err=True)
        return last
    click.echo("")
    if last is not None and show_speed:
        click.echo(speed_line(last, prompt_s, decode_label(chat.model.config)), err=True)
    return last
