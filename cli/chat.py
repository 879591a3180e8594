"""`offload-chat`: chat with a local model over long documents.

Answers stream to stdout; progress, the speed line and errors go to stderr. Exit codes:
0 ok, 1 other error, 2 bad input or option, 3 plan does not fit, 4 context overflow, 5 bad session,
6 model not found."""

from __future__ import annotations

import sys
import time
import traceback

import click

from .documents import read_document, with_documents
from .speed import speed_line
from .units import BytesType, CountType

__all__ = ["main"]

HELP_EPILOG = """\b
Exit codes: 0 ok, 1 unexpected error, 2 bad input or option, 3 memory plan does not fit,
4 context overflow (prompt + answer > --ctx), 5 bad session file, 6 model not found.
Every option also reads an OFFLOAD_* environment variable (e.g. OFFLOAD_CTX=200k).
"""

SLASH_HELP = """commands: /help  /clear (forget the conversation)  /exit (or Ctrl-D)
Ctrl-C stops an answer and returns to the prompt."""


class _Progress:
    """Prefill progress on stderr: layers done, tokens, elapsed and ETA."""

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
        if done == total:  # clear the bar: the speed line follows the answer
            click.echo("\r" + " " * 79 + "\r", err=True, nl=False)


def _answer(chat, text, opts, show_speed=True) -> None:
    """Stream one answer to stdout; Ctrl-C stops it and keeps the conversation."""
    stream = chat.stream(text, progress=_Progress(sys.stderr.isatty()), **opts)
    last = None
    t0 = time.perf_counter()
    try:
        for r in stream:
            if last is None:
                prompt_s = time.perf_counter() - t0
            last = r
            if r.text:
                click.echo(r.text, nl=False)
                sys.stdout.flush()
    except KeyboardInterrupt:
        stream.close()
        click.echo("\n[stopped]", err=True)
    finally:
        click.echo("")
    if last is not None and show_speed:
        click.echo(speed_line(last, prompt_s), err=True)


def _interactive(chat, first_prefix, opts) -> None:
    click.echo(f"offload-chat: {SLASH_HELP}", err=True)
    pending_docs = first_prefix
    while True:
        try:
            click.echo("> ", err=True, nl=False)
            line = input()
        except EOFError:
            click.echo("", err=True)
            return
        except KeyboardInterrupt:
            click.echo("", err=True)
            continue
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd = line.split()[0]
            if cmd == "/exit":
                return
            if cmd == "/clear":
                chat.clear()
                click.echo("conversation cleared", err=True)
            elif cmd == "/help":
                click.echo(SLASH_HELP, err=True)
            else:
                click.echo(f"unknown command {cmd}; {SLASH_HELP}", err=True)
            continue
        text = pending_docs(line) if pending_docs else line
        pending_docs = None
        _answer(chat, text, opts)


@click.command(epilog=HELP_EPILOG, context_settings={"auto_envvar_prefix": "OFFLOAD",
                                                      "help_option_names": ["-h", "--help"]})
@click.option("-m", "--model", "model_path", default=None, help="Local model dir or .gguf (default: embedded SmolLM2-135M-Instruct).")
@click.option("-c", "--ctx", type=CountType(), default=None, help="Context in tokens: 8192, 200k (=200,000), 128K (=131,072).")
@click.option("-f", "--file", "files", multiple=True, help="A UTF-8 text/markdown document (repeatable; - = stdin).")
@click.option("-p", "--prompt", default=None, help="Ask one question, print the answer, exit.")
@click.option("-s", "--system", default=None, help="System prompt.")
@click.option("-n", "--max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--temp", type=click.FloatRange(min=0.0), default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=1.0, show_default=True)
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=None)
@click.option("--prefill-chunk", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--gpu-mem", type=BytesType(), default=None, help="GPU memory for the KV hot set (e.g. 20G).")
@click.option("--host-mem", type=BytesType(), default=None, help="Host memory for KV (e.g. 32G).")
@click.option("--disk-dir", type=click.Path(file_okay=False), default=None, help="Where KV spills to disk.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks and loading details.")
def main(model_path, ctx, files, prompt, system, max_new_tokens, temp, top_p, top_k, seed, prefill_chunk,
         gpu_mem, host_mem, disk_dir, verbose):
    """Chat with a local model over long documents. Nothing leaves this machine."""
    try:
        _run(model_path, ctx, files, prompt, system, max_new_tokens, temp, top_p, top_k, seed,
             prefill_chunk, gpu_mem, host_mem, disk_dir, verbose)
    except Exception as e:  # every failure becomes one line and an exit code
        from offload.errors import OffloadError

        if verbose:
            traceback.print_exc()
        if isinstance(e, OffloadError):
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        click.echo(f"error: unexpected {type(e).__name__}: {e} (run with -v for details)", err=True)
        sys.exit(1)


def _run(model_path, ctx, files, prompt, system, max_new_tokens, temp, top_p, top_k, seed, prefill_chunk,
         gpu_mem, host_mem, disk_dir, verbose):
    documents = [read_document(f) for f in files]  # bad documents fail before the model loads
    import offload

    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    config = offload.OffloadConfig(ctx=ctx, prefill_chunk=prefill_chunk, gpu_mem=gpu_mem,
                                   host_mem=host_mem, disk_dir=disk_dir)
    t0 = time.perf_counter()
    model = offload.load_model(model_path, config)
    if verbose:
        click.echo(f"loaded {model.model_dir} on {model.device} ({model.dtype}) in "
                   f"{time.perf_counter() - t0:.1f} s; context {model.n_ctx:,} tokens", err=True)
    if ctx and model.trained_ctx and ctx > model.trained_ctx:
        click.echo(f"warning: --ctx {ctx:,} is larger than the {model.trained_ctx:,} tokens this model "
                   "was trained on; answers past that may degrade", err=True)
    opts = dict(max_new_tokens=max_new_tokens, temperature=temp, top_p=top_p, top_k=top_k, seed=seed)
    with offload.Chat(model, system=system) as chat:
        if prompt is not None:
            _answer(chat, with_documents(documents, prompt), opts)
        else:
            _interactive(chat, (lambda msg: with_documents(documents, msg)) if documents else None, opts)
