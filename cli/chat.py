"""`offload-chat`: chat with a local model over long documents.

Answers stream to stdout; progress, the speed line and errors go to stderr."""

from __future__ import annotations

import json
import sys

import click

from .documents import read_document, with_documents
from .interactive import repl
from .help_groups import GroupedCommand
from .options import checked_plan, fail, load_checked, model_options, opt, quiet_transformers, runtime_options
from .session_file import maybe_save, open_session
from .signals import exit_on_term_signals
from .stream import answer

__all__ = ["main"]

HELP_EPILOG = """\b
Exit codes: 0 ok, 1 unexpected error, 2 bad input or option, 3 memory plan does not fit,
4 context overflow (prompt + answer > --ctx), 5 bad session file, 6 model not found or
not a usable model, 7 disk full (free space, --disk-dir on a larger disk, or more --host-mem);
128+N killed by signal N (SIGTERM 143, SIGHUP 129: the spill is removed first).
Every option also reads an OFFLOAD_* environment variable (shown with each option).
"""


@click.command(cls=GroupedCommand, epilog=HELP_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@model_options
@opt("-f", "--file", "files", env="FILE", multiple=True, help="UTF-8 text/markdown document (repeatable; - reads stdin).")
@opt("-p", "--prompt", env="PROMPT", default=None, help="Ask one question, print the answer, exit.")
@opt("-s", "--system", env="SYSTEM", default=None, help="System prompt.")
@opt("-n", "--max-new-tokens", env="MAX_NEW_TOKENS", type=click.IntRange(min=1), default=512, show_default=True)
@opt("--temp", env="TEMP", type=click.FloatRange(min=0.0), default=0.0, show_default=True, help="0 = greedy.")
@opt("--top-p", env="TOP_P", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=1.0, show_default=True)
@opt("--top-k", env="TOP_K", type=click.IntRange(min=0), default=0, show_default=True)
@opt("--seed", env="SEED", type=click.IntRange(min=0), default=None)
@runtime_options
@opt("--session", env="SESSION", type=click.Path(dir_okay=True), default=None, help="Reopen this session if it exists (no prefill), else create it.")
@opt("--dry-run", env="DRY_RUN", is_flag=True, help="Print the memory plan and exit.")
@opt("--json", "as_json", env="JSON", is_flag=True, help="With --dry-run: the plan as JSON.")
@opt("-v", "--verbose", env="VERBOSE", is_flag=True, help="Tracebacks and loading details.")
def main(**o):
    """Chat with a local model over long documents. Nothing leaves this machine."""
    try:
        with exit_on_term_signals():  # SIGTERM/SIGHUP unwind like Ctrl-D: no spill or temp dir left
            _run(**o)
    except Exception as e:  # every failure becomes one line and an exit code
        fail(e, o["verbose"])


def _run(**o):
    documents = [read_document(f) for f in o["files"]]  # bad documents fail before the model loads
    import offload

    quiet_transformers(o["verbose"])
    config, memory = checked_plan(o)
    if o["dry_run"]:
        click.echo(json.dumps(memory.to_dict(), indent=2) if o["as_json"] else str(memory))
        sys.exit(0 if memory.fits else offload.PlanError.exit_code)
    model = load_checked(o, config, memory)
    opts = dict(max_new_tokens=o["max_new_tokens"], temperature=o["temp"], top_p=o["top_p"],
                top_k=o["top_k"], seed=o["seed"])
    with offload.Chat(model, system=o["system"]) as chat:
        loaded = open_session(chat, o["session"], o["verbose"])
        if o["prompt"] is not None:
            last = answer(chat, with_documents(documents, o["prompt"]), opts)
            maybe_save(chat, o["session"], loaded, last)
        else:
            repl(chat, documents, opts)
            if o["session"] is not None and chat.n_tokens:
                chat.save_session(o["session"])


if __name__ == "__main__":
    main()
