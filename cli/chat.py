"""`offload-chat`: chat with a local model over long documents.

Answers stream to stdout; progress, the speed line and errors go to stderr."""

from __future__ import annotations

import json
import sys
import time
import traceback

import click

from .documents import read_document, with_documents
from .interactive import repl
from .session_file import maybe_save, open_session
from .stream import answer
from offload.config import LAYER_BUDGETS, SELECTION_POLICIES

from .units import BudgetType, BytesType, CountType

__all__ = ["main"]

HELP_EPILOG = """\b
Exit codes: 0 ok, 1 unexpected error, 2 bad input or option, 3 memory plan does not fit,
4 context overflow (prompt + answer > --ctx), 5 bad session file, 6 model not found.
Every option also reads an OFFLOAD_* environment variable (shown with each option).
"""


def _opt(*names, env, **kw):
    return click.option(*names, envvar=f"OFFLOAD_{env}", show_envvar=True, **kw)


@click.command(epilog=HELP_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@_opt("-m", "--model", env="MODEL", default=None, help="Local model dir or .gguf (default: embedded SmolLM2-135M-Instruct).")
@_opt("-c", "--ctx", env="CTX", type=CountType(), default=None, help="Context in tokens: 8192, 200k (=200,000), 128K (=131,072). Default: the model's.")
@_opt("-f", "--file", "files", env="FILE", multiple=True, help="UTF-8 text/markdown document (repeatable; - reads stdin).")
@_opt("-p", "--prompt", env="PROMPT", default=None, help="Ask one question, print the answer, exit.")
@_opt("-s", "--system", env="SYSTEM", default=None, help="System prompt.")
@_opt("-n", "--max-new-tokens", env="MAX_NEW_TOKENS", type=click.IntRange(min=1), default=512, show_default=True)
@_opt("--temp", env="TEMP", type=click.FloatRange(min=0.0), default=0.0, show_default=True, help="0 = greedy.")
@_opt("--top-p", env="TOP_P", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=1.0, show_default=True)
@_opt("--top-k", env="TOP_K", type=click.IntRange(min=0), default=0, show_default=True)
@_opt("--seed", env="SEED", type=click.IntRange(min=0), default=None)
@_opt("--budget", env="BUDGET", type=BudgetType(), default=None, help="KV tokens per layer (2048) or a fraction of the context (1/16, 0.05).")
@_opt("--policy", env="POLICY", type=click.Choice(SELECTION_POLICIES), default="token", show_default=True, help="With --budget: how chunks are chosen (token, bound = ours: a low-rank bound per token or per chunk; the rest are baselines).")
@_opt("--layer-budget", env="LAYER_BUDGET", type=click.Choice(LAYER_BUDGETS), default="adaptive", show_default=True, help="With --budget: per-layer split (squeeze = SqueezeAttention; adaptive = where the prompt's attention says it keeps the most).")
@_opt("--select-every", env="SELECT_EVERY", type=click.IntRange(min=1), default=None, help="With --budget: decode steps a layer keeps its chunk selection (1 = choose at every step; more is faster on CPU, may miss what a later step needs).")
@_opt("--kv-chunk", env="KV_CHUNK", type=click.IntRange(min=1), default=None, help="Tokens per KV chunk, the unit of placement and transfer (default with --budget: 8 for --policy token, 16 for the others; 64 without).")
@_opt("--select-unit", env="SELECT_UNIT", type=click.Choice(["token", "chunk"]), default=None, help="With --budget: what a selection picks (default: single tokens for --policy token, whole chunks for the others, which score chunks).")
@_opt("--dense", env="DENSE", is_flag=True, help="Exact attention over the whole context (no selection).")
@_opt("--prefill-chunk", env="PREFILL_CHUNK", type=click.IntRange(min=1), default=512, show_default=True)
@_opt("--gpu-mem", env="GPU_MEM", type=BytesType(), default=None, help="GPU memory to plan for (e.g. 24G).")
@_opt("--host-mem", env="HOST_MEM", type=BytesType(), default=None, help="Host memory for KV (e.g. 32G).")
@_opt("--disk-dir", env="DISK_DIR", type=click.Path(file_okay=False), default=None, help="Where KV spills to disk.")
@_opt("--session", env="SESSION", type=click.Path(dir_okay=True), default=None, help="Reopen this session if it exists (no prefill), else create it.")
@_opt("--dry-run", env="DRY_RUN", is_flag=True, help="Print the memory plan and exit.")
@_opt("--json", "as_json", env="JSON", is_flag=True, help="With --dry-run: the plan as JSON.")
@_opt("-v", "--verbose", env="VERBOSE", is_flag=True, help="Tracebacks and loading details.")
def main(**o):
    """Chat with a local model over long documents. Nothing leaves this machine."""
    try:
        _run(**o)
    except Exception as e:  # every failure becomes one line and an exit code
        from offload.errors import OffloadError

        if o["verbose"]:
            traceback.print_exc()
        if isinstance(e, OffloadError):
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        click.echo(f"error: unexpected {type(e).__name__}: {e} (run with -v for details)", err=True)
        sys.exit(1)


def _config(o, offload):
    tiered = not o["dense"] and any(o[k] is not None for k in ("gpu_mem", "host_mem", "disk_dir", "budget"))
    fields = dict(ctx=o["ctx"], prefill_chunk=o["prefill_chunk"], gpu_mem=None, host_mem=o["host_mem"],
                  disk_dir=o["disk_dir"], kv_store="tiered" if tiered else "dense", kv_chunk=o["kv_chunk"])
    if o["budget"] is not None and not o["dense"]:
        fields.update(budget=o["budget"], policy=o["policy"], layer_budget=o["layer_budget"])
        for key in ("select_every", "select_unit"):
            if o[key] is not None:
                fields[key] = o[key]
    return offload.OffloadConfig(**fields)


def _plan(o, offload, config):
    from transformers import AutoConfig

    from offload.loading import resolve_model_dir
    from offload.plan import plan

    hf_config = AutoConfig.from_pretrained(str(resolve_model_dir(o["model"])), local_files_only=True)
    ctx = o["ctx"] or getattr(hf_config, "max_position_embeddings", 4096)
    return plan(hf_config, ctx, gpu_mem=o["gpu_mem"], host_mem=o["host_mem"], disk_dir=o["disk_dir"],
                offload=config, dtype=config.torch_dtype())


def _run(**o):
    documents = [read_document(f) for f in o["files"]]  # bad documents fail before the model loads
    import offload

    if not o["verbose"]:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    config = _config(o, offload)
    memory = _plan(o, offload, config)
    if config.store_kind == "tiered":  # the GPU hot set is what the plan leaves after weights etc.
        config = config.replace(gpu_mem=max(1, memory.hot_set_bytes))
    if o["dry_run"]:
        click.echo(json.dumps(memory.to_dict(), indent=2) if o["as_json"] else str(memory))
        sys.exit(0 if memory.fits else offload.PlanError.exit_code)
    if not memory.fits:
        raise offload.PlanError(
            f"{memory.ctx:,} tokens do not fit: " + "; ".join(memory.reasons)
            + f". The largest context that fits is {memory.max_ctx:,}: pass --ctx {memory.max_ctx:,}, "
            "or give more room (--host-mem, --disk-dir on a larger disk)"
        )
    t0 = time.perf_counter()
    model = offload.load_model(o["model"], config)
    if o["verbose"]:
        click.echo(f"loaded {model.model_dir} on {model.device} ({model.dtype}) in "
                   f"{time.perf_counter() - t0:.1f} s; context {model.n_ctx:,} tokens", err=True)
    if o["ctx"] and model.trained_ctx and o["ctx"] > model.trained_ctx:
        click.echo(f"warning: --ctx {o['ctx']:,} is larger than the {model.trained_ctx:,} tokens this "
                   "model was trained on; answers past that may degrade", err=True)
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
