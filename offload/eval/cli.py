"""`offload-eval`: RULER-style synthetic tasks, full attention vs offload, one command.

    offload-eval --tasks all --lengths 1k,2k,4k,8k --modes full,dense --samples 10 --json out.json
    offload-eval --recall full,window --budgets 1/16,1/8 --recall-length 4k

Prints one table (task x length x mode -> score, and the ratio to `full`) on stdout, a progress bar
and the elapsed time on stderr. Exit codes: 0 ok, 1 unexpected error, 2 bad input or option, others
as offload's errors (4 context overflow, 6 model not found).
"""

from __future__ import annotations

import datetime
import platform
import sys
import time

import click

from ..errors import OffloadError
from .errors import EvalError
from .modes import unique_list, format_length, parse_budget, parse_length, parse_lengths, parse_modes

__all__ = ["main"]


def _task_list(text: str) -> list[str]:
    from .tasks import TASKS

    if text.strip() == "all":
        return list(TASKS)
    names = [t.strip() for t in text.split(",")]
    for name in names:
        if name not in TASKS:
            raise EvalError(f"unknown task {name!r}; tasks are {', '.join(TASKS)} (or 'all')")
    return list(dict.fromkeys(names))


def _checked(parse):
    """A click callback that turns an EvalError from `parse` into a usage error (exit 2)."""

    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return parse(value)
        except EvalError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None

    return callback


def _budgets(text: str):
    return [parse_budget(p.strip()) for p in text.split(",")]


@click.command(epilog="Lengths: 1k = 1024 tokens, prompt + answer (RULER's convention).")
@click.option("--model", "model_path", default=None, metavar="PATH",
              help="Local model (transformers dir or .gguf) or an embedded model by name (smollm2, gemma3-270m). "
                   "Default: the embedded SmolLM2-135M-Instruct.")
@click.option("--tasks", default="all", show_default=True, callback=_checked(_task_list),
              help="Comma list of tasks, or 'all'.")
@click.option("--lengths", default="1k,2k,4k,8k", show_default=True, callback=_checked(parse_lengths),
              help="Comma list of sequence lengths (prompt + answer budget).")
@click.option("--modes", default="full,dense", show_default=True, callback=_checked(parse_modes),
              help="Comma list: full (HF reference), dense (offload, all KV), sparse@B "
                   "(B = 1/16, 0.0625, 512).")
@click.option("--policy", default=None,
              help="Selection policies for sparse@B modes, a comma list (token, bound, quest, landmark, "
                   "snapkv, h2o; NAME+squeeze for SqueezeAttention layer budgets; NAME/none drops what is not "
                   "selected, as published, NAME/k4v2 another rest than the default k4v4), or 'all'. Every "
                   "sparse mode runs once per policy, all from one prefill per sample.")
@click.option("--select-every", default=None, type=click.IntRange(min=1),
              help="Decode steps a sparse mode keeps its chunk selection (SparseConfig.select_every; "
                   "default: the config's).")
@click.option("--kv-chunk", default=None, type=click.IntRange(min=1),
              help="Tokens per KV chunk of the sparse modes, the unit of selection (OffloadConfig.kv_chunk; "
                   "default: the config's). Task runs only.")
@click.option("--samples", default=10, show_default=True, type=click.IntRange(min=1),
              help="Samples per (task, length).")
@click.option("--limit", default=None, type=click.IntRange(min=1),
              help="Run only the first N of each cell's --samples samples: the same prompts a full run "
                   "has (single-needle depths are spread over --samples), for runs that cannot afford all.")
@click.option("--rows", default=8, show_default=True, type=click.IntRange(min=1),
              help="Sparse configs decoded together from one prefill (each holds a copy of the prompt's "
                   "KV: fewer rows, less memory).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--max-new-tokens", default=None, type=click.IntRange(min=1),
              help="Cap on every task's answer budget, for quick runs (scores drop where answers are cut).")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Write every answer and the summary here (rewritten after each answer).")
@click.option("--resume", is_flag=True,
              help="Keep the answers already in --json (same settings) and run only the missing ones.")
@click.option("--recall", "recall_policies", default=None, metavar="POLICIES",
              help="Instead of tasks: attention recall of these selection policies (e.g. full,window).")
@click.option("--budgets", default="1/16", show_default=True, callback=_checked(_budgets),
              help="Budgets for --recall (fraction of the context or tokens).")
@click.option("--recall-length", default="4k", show_default=True, callback=_checked(parse_length),
              help="Natural-text context length for --recall.")
@click.option("--device", default="auto", show_default=True, metavar="DEVICE",
              help="Compute device: auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Compute dtype (auto: bf16 on CUDA, fp32 on CPU).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
def main(model_path, tasks, lengths, modes, policy, select_every, kv_chunk, samples, limit, rows, seed,
         max_new_tokens, json_path, resume, recall_policies, budgets, recall_length, device, dtype, progress):
    """Score RULER-synthetic tasks (needle retrieval, multi-hop tracing, aggregation, multi-needle
    extraction) with full attention and with offload, on 2 CPU cores or a GPU."""
    t0 = time.perf_counter()
    try:
        config = _config(device, dtype, kv_chunk)
        if recall_policies is not None:
            if kv_chunk is not None:
                raise EvalError("--kv-chunk applies to task runs; --recall selects chunks of the default size")
            _run_recall(model_path, config, recall_policies, budgets, recall_length, seed, select_every)
        else:
            _run_tasks(model_path, config, tasks, lengths, modes, policy, samples, limit, rows, seed,
                       max_new_tokens, json_path, resume, progress, select_every)
    except EvalError as e:
        raise click.UsageError(str(e)) from None
    except OffloadError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted after {time.perf_counter() - t0:.0f} s", err=True)
        sys.exit(130)
    click.echo(f"elapsed {time.perf_counter() - t0:.1f} s")


def _previous(json_path, settings: dict, recorded: dict | None = None):
    """Records of an earlier run in `json_path` made with the same settings (for --resume);
    `recorded`: settings checked only where the file records them (runs before they were recorded
    were all fp32 CPU runs)."""
    import json
    import os

    from .runner import Record

    if not json_path or not os.path.exists(json_path):
        return [], {}
    with open(json_path) as f:
        doc = json.load(f)
    meta = doc.get("meta", {})
    checks = {**settings, **{k: v for k, v in (recorded or {}).items() if k in meta}}
    for name, value in checks.items():
        if meta.get(name) != value:
            raise EvalError(
                f"--resume: {json_path} was written with {name}={meta.get(name)!r}, not {value!r}"
            )
    return [Record.from_json(r) for r in doc.get("records", [])], meta


def _config(device: str, dtype: str, kv_chunk: int | None):
    """The OffloadConfig every mode starts from (a CUDA device torch cannot see is a ConfigError)."""
    import offload

    return offload.OffloadConfig(kv_chunk=kv_chunk, device=device, dtype=dtype)


def _machine(model) -> str:
    """Where the answers were computed: the CPU, or the GPU's name."""
    import torch

    if model.device.type == "cuda":
        return torch.cuda.get_device_name(model.device)
    return f"{platform.machine()} {platform.processor() or ''}".strip()


def _run_tasks(model_path, config, tasks, lengths, modes, policy, samples, limit, rows, seed, max_new_tokens,
               json_path, resume, progress, select_every=None):
    import offload

    from .corpus import natural_text_source
    from .modes import sparse_config
    from .kept import format_kept
    from .report import JsonWriter, format_table, format_vs_full
    from .runner import run_eval

    policy = _policies(policy)
    for m in modes:  # a bad policy fails before the model loads
        if m.kind == "sparse":
            for p in policy or [None]:
                sparse_config(offload.OffloadConfig(), m, p, 1024)
    if resume and not json_path:
        raise EvalError("--resume needs --json PATH (the file to resume)")
    select_every = select_every or 1
    sparse_chunk = _sparse_chunks(config, modes, policy)
    done, old_meta = [], {}
    if resume:
        same = {"seed": seed, "samples": samples, "max_new_tokens_cap": max_new_tokens,
                "select_every": select_every}
        if sparse_chunk is not None:  # full and dense answers do not depend on it
            same["kv_chunk"] = sparse_chunk
        done, old_meta = _previous(json_path, same, {"dtype": str(config.torch_dtype()).removeprefix("torch.")})
    model = offload.load_model(model_path, config=config)
    writer = None
    if json_path:
        writer = JsonWriter(json_path, {
            "command": " ".join(["offload-eval", *sys.argv[1:]]),
            "model": str(model.model_dir),
            "tasks": tasks, "lengths": lengths, "modes": [m.label for m in modes], "policy": policy,
            "samples": samples, "limit": limit, "seed": seed, "max_new_tokens_cap": max_new_tokens,
            "select_every": select_every, "kv_chunk": sparse_chunk,
            "natural_text": natural_text_source(),
            "machine": _machine(model), "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "torch_threads": __import__("torch").get_num_threads(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "finished": None,
            "resumed_from": {k: old_meta.get(k) for k in ("started", "command", "torch_threads", "seconds")}
            if done else None,
        })
        writer.records = list(done)
    t0 = time.perf_counter()
    records = run_eval(model, tasks=tasks, lengths=lengths, modes=modes, samples=samples, limit=limit, rows=rows,
                       seed=seed, policy=policy, max_new_tokens=max_new_tokens, progress=progress, on_record=writer,
                       done=done, select_every=select_every)
    if writer:
        writer.write(finished=datetime.datetime.now().isoformat(timespec="seconds"),
                     seconds=round(time.perf_counter() - t0, 1))
    click.echo(format_table(records))
    if any(r.mode == "full" for r in records) and any(r.mode != "full" for r in records):
        click.echo("\nanswers vs full (identical = same answer tokens):")
        click.echo(format_vs_full(records))
    if any(r.mode in ("full", "dense") for r in records) and any(r.mode.startswith("sparse@") for r in records):
        click.echo("\n" + format_kept(records))
    shown = ", ".join(map(format_length, lengths))
    click.echo(f"\nscores: mean x 100 per cell (RULER string match); lengths {shown}; "
               f"natural text: {natural_text_source()}")


def _sparse_of(policy: str):
    from ..config import SparseConfig

    return SparseConfig(budget=1, policy=policy)


def _sparse_chunks(config, modes, policies):
    """What the sparse modes select in, tokens per selected unit (meta "kv_chunk", checked on
    --resume): one size when every policy uses the same (--kv-chunk, or policies of one default),
    else {policy: size} (`token` picks single tokens: 1; the others chunks of 16 tokens by default);
    None without sparse modes."""
    from ..store_spec import StoreSpec
    from .modes import split_policy

    if not any(m.kind == "sparse" for m in modes) or not policies:
        return None
    configs = {p: config.replace(sparse=_sparse_of(split_policy(p)[0])) for p in policies}
    chunks = {p: 1 if c.sparse.policy.selects_tokens else StoreSpec.chunk_of(c) for p, c in configs.items()}
    sizes = set(chunks.values())
    return sizes.pop() if len(sizes) == 1 else chunks


def _policies(text: str | None) -> list[str] | None:
    """`--policy`: None, 'all' or a comma list, duplicates dropped."""
    from ..sparse import policy_names

    if text is None:
        return None
    if text.strip() == "all":
        return list(policy_names())
    return unique_list(str, text, "policies")


def _run_recall(model_path, config, policies, budgets, length, seed, select_every=None):
    import offload
    from offload.loading import load_reference

    from .policies import get_policy
    from .recall import attention_recall, format_recall_table, split_name

    names = [p.strip() for p in policies.split(",") if p.strip()]
    for name in names:
        try:
            get_policy(split_name(name)[0])
        except ValueError as e:
            raise EvalError(str(e)) from None
    model = offload.load_model(model_path, config=config)
    reference = load_reference(model)
    results = attention_recall(reference, model.tokenizer, names, budgets, n_context=length, seed=seed,
                               select_every=select_every or 1)
    click.echo(format_recall_table(results))


if __name__ == "__main__":  # pragma: no cover
    main()
