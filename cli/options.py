"""The options `offload-chat` and `offload-serve` share: which model, how much context, the sparse
budget and the memory limits, each with its `OFFLOAD_*` variable; and the steps both take with them
before serving a token (build the config, plan memory, refuse what does not fit, load the model).

One definition keeps the two commands from drifting: `offload-serve --ctx 200k --budget 1/16` means
what it means to `offload-chat`."""

from __future__ import annotations

import dataclasses
import sys
import time

import click

from offload.embedded import EMBEDDED
from offload.sparse import policy_classes
from offload.sparse.budget_plan import SPLITS

from .units import BudgetType, BytesType, CountType

__all__ = ["opt", "model_options", "runtime_options", "offload_config", "checked_plan", "require_fit", "load_checked",
           "quiet_transformers", "fail"]  # fmt: skip


def opt(*names, env, **kw):
    """A click option that also reads `OFFLOAD_<env>` (shown in --help)."""
    return click.option(*names, envvar=f"OFFLOAD_{env}", show_envvar=True, **kw)


_MODEL = (
    opt("-m", "--model", env="MODEL", default=None, help="Local model dir or .gguf, or an embedded model by name: " + "; ".join(f"{e.name} = {e.title}, {e.use}" for e in EMBEDDED) + "."),
    opt("-c", "--ctx", env="CTX", type=CountType(), default=None, help="Context in tokens: 8192, 200k (=200,000), 128K (=131,072). Default: the model's."),
)  # fmt: skip

def _policy_help() -> str:
    lines = "; ".join(f"{name} = {cls.summary}" for name, cls in policy_classes().items())
    return f"With --budget: how the KV to attend to is chosen ({lines})."


_RUNTIME = (
    opt("--budget", env="BUDGET", type=BudgetType(), default="auto", show_default=True, help="KV tokens a step attends to per layer (2048) or a fraction of the context (1/16, 0.05); auto = exact attention when the whole KV fits the GPU hot set the memory plan leaves, else sparse at 1/16 (the plan output says which and why)."),
    opt("--policy", env="POLICY", type=click.Choice(tuple(policy_classes())), default="token", show_default=True, help=_policy_help()),
    opt("--split", "--layer-budget", "split", env="SPLIT", type=click.Choice(SPLITS), default="adaptive", show_default=True, help="With --budget: how the budget is split over layers (adaptive = where the prompt's attention says it keeps the most; squeeze = SqueezeAttention)."),
    opt("--select-every", env="SELECT_EVERY", type=click.IntRange(min=1), default=None, help="With --budget: decode steps a layer keeps its selection (1 = choose at every step; more is faster on CPU, may miss what a later step needs)."),
    opt("--rest", env="REST", type=click.Choice(["auto", "k4v4", "k4v2", "k8v4", "k8v8", "none"], case_sensitive=False), default="auto", show_default=True, help="With --budget: the context a step does not select is still attended at low precision (K and V bits; none = dropped, as published selection methods do). k4v4 keeps exact attention's answers on record lookups and costs 5/16 of bf16 KV more memory; auto = k4v4 where the memory plan fits it, else none; none on a CPU whose memory holds the KV, where it costs more than exact attention (both said on stderr)."),
    opt("--select-unit", env="SELECT_UNIT", type=click.Choice(["token", "chunk"]), default=None, help="With --budget --policy token: pick single tokens (default) or whole chunks (the other policies score chunks)."),
    opt("--dense", env="DENSE", is_flag=True, help="Exact attention over the whole context (no selection)."),
    opt("--kv-chunk", env="KV_CHUNK", type=click.IntRange(min=1), default=None, help="Tokens per KV chunk, the unit of placement and transfer (default with --budget: the policy's, 8 for token, 16 for the others; 64 without)."),
    opt("--prefill-chunk", env="PREFILL_CHUNK", type=click.IntRange(min=1), default=512, show_default=True),
    opt("--device", env="DEVICE", default="auto", show_default=True, metavar="DEVICE", help="Compute device: auto (CUDA when present), cpu, cuda, cuda:N. With --dry-run, cuda plans for a GPU this machine lacks (give --gpu-mem)."),
    opt("--dtype", env="DTYPE", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True, help="Weights and KV dtype (auto: bf16 on CUDA, fp32 on CPU)."),
    opt("--gpu-mem", env="GPU_MEM", type=BytesType(), default=None, help="GPU memory to plan for (e.g. 24G; default: the device's)."),
    opt("--host-mem", env="HOST_MEM", type=BytesType(), default=None, help="Host memory for KV (e.g. 32G)."),
    opt("--disk-dir", env="DISK_DIR", type=click.Path(file_okay=False), default=None, help="Where KV spills to disk."),
    opt("-t", "--threads", env="THREADS", type=click.IntRange(min=1), default=None, help="CPU threads for compute (like llama.cpp's -t). Default: one per core for prompts, and for decoding the count measured fastest as it runs (on a busy machine fewer threads decode faster)."),
)  # fmt: skip


def _apply(decorators, f):
    for d in reversed(decorators):
        f = d(f)
    return f


def model_options(f):
    """-m/--model and -c/--ctx."""
    return _apply(_MODEL, f)


def runtime_options(f):
    """--budget ... --disk-dir: sparse decode and memory limits."""
    return _apply(_RUNTIME, f)


def _device_dtype(o: dict) -> tuple[str, str]:
    """(device, dtype) for the config. A dry run may plan for a CUDA device this machine lacks: the
    config then computes nothing (it runs on the CPU) and the plan gets the device (`_plan`)."""
    import torch

    device, dtype = o.get("device") or "auto", o.get("dtype") or "auto"
    if device.startswith("cuda") and dtype == "auto":
        dtype = "bf16"
    if o.get("dry_run") and device.startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"
    return device, dtype


def offload_config(o: dict, budget="given"):
    """The OffloadConfig the shared options ask for (--gpu-mem is what the memory plan plans for:
    the store's hot set is that plan's, `StoreSpec`); budget: the sparse budget to use instead of
    --budget (None = exact attention), as `--budget auto` decides."""
    from offload.config import OffloadConfig, SparseConfig
    from offload.errors import ConfigError
    from offload.sparse import make_policy

    budget = o["budget"] if budget == "given" else budget
    sparse = None
    if budget is not None and budget != "auto" and not o["dense"]:
        params = {}
        if o["select_unit"] is not None:
            if o["policy"] != "token":
                raise ConfigError(f"--select-unit applies to --policy token; {o['policy']} scores whole chunks")
            params["unit"] = o["select_unit"]
        sparse = SparseConfig(budget=budget, policy=make_policy(o["policy"], **params), split=o["split"],
                              select_every=o["select_every"] or 1, rest=_rest(o))  # fmt: skip
    # memory limits tier the KV whatever the decode (exact attention then reads chunks from the tiers)
    tiered = sparse is not None or any(o[k] is not None for k in ("gpu_mem", "host_mem", "disk_dir"))
    device, dtype = _device_dtype(o)
    return OffloadConfig(ctx=o["ctx"], prefill_chunk=o["prefill_chunk"], gpu_mem=o["gpu_mem"],
                         host_mem=o["host_mem"], disk_dir=o["disk_dir"], kv_store="tiered" if tiered else "dense",
                         kv_chunk=o["kv_chunk"], sparse=sparse, device=device, dtype=dtype,
                         threads=o.get("threads"))  # fmt: skip


def _plan(o: dict, config):
    from transformers import AutoConfig

    from offload.loading import resolve_model_dir
    from offload.plan import plan

    # a dry run plans from config.json alone: a directory without weights is enough
    model_dir = resolve_model_dir(o["model"], need_weights=not o.get("dry_run"))
    hf_config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    ctx = o["ctx"] or getattr(hf_config, "max_position_embeddings", 4096)
    device = o.get("device") or "auto"
    return plan(hf_config, ctx, gpu_mem=o["gpu_mem"], host_mem=o["host_mem"], disk_dir=o["disk_dir"],
                offload=config, dtype=config.torch_dtype(), device=None if device == "auto" else device)


def _rest_option(o: dict) -> str:
    """--rest as given, lower case ("auto" when absent)."""
    return (o.get("rest") or "auto").lower()


def _rest(o: dict) -> str:
    """--rest as SparseConfig takes it (auto starts as the default rest; `checked_plan` may drop it)."""
    from offload.sparse.rest import Rest

    rest = _rest_option(o)
    return Rest().label if rest == "auto" else rest


def checked_plan(o: dict):
    """(config, memory plan) for the options, before any weight loads (the loaded model's store
    gets this plan's hot set: `OffloadModel.planned_hot_set` plans with the same inputs). A plan
    that does not fit is returned, not refused (a dry run prints it); `load_checked` refuses it.
    --budget auto picks exact or sparse decode (`offload.decode_choice`); the plan's `decode` says
    which and why. --rest auto: when the plan fits only without the rest, or plans for a CPU whose
    memory holds the KV (`decode_choice.fit_rest`), the rest is dropped and stderr says so."""
    from offload.decode_choice import HOST_SKETCHES_NOTE, choose_decode, explicit_choice

    if o["budget"] == "auto" and not o["dense"]:
        choice, config, memory = choose_decode(lambda budget: _fitted(o, offload_config(o, budget)))
    else:
        config, memory = _fitted(o, offload_config(o))
        choice = explicit_choice(config.sparse.budget if config.sparse else None, o["dense"])
    if _rest_option(o) == "auto" and config.sparse is not None and config.sparse.rest is None:
        why = ("on a CPU whose memory holds the KV, attending it at low precision costs more than exact "
               "attention (--dense)" if memory.device == "cpu" and memory.whole_kv_fits else
               f"{_rest(o)} does not fit beside the weights at {memory.ctx:,} tokens")
        click.echo(f"note: --rest auto: {why}, so what a step does not select is dropped (--rest none); "
                   "answers on record lookups may differ from exact attention's", err=True)  # fmt: skip
    reason = choice.reason
    if config.sparse is not None and getattr(config.sparse.policy, "sketches", "device") == "host":
        reason += f"; {HOST_SKETCHES_NOTE}"
    return config, dataclasses.replace(memory, decode=reason)


def _fitted(o: dict, config):
    """(config, plan) for `config`, without the rest when --rest auto and only that fits; with two
    levels and the token sketches in host memory when only that fits (`decode_choice.fit_summaries`)."""
    from offload.decode_choice import fit_rest, fit_summaries

    if _rest_option(o) == "auto":
        return fit_summaries(config, lambda c: fit_rest(c, lambda c2: _plan(o, c2)))
    return fit_summaries(config, lambda c: (c, _plan(o, c)))


def require_fit(memory) -> None:
    """PlanError (exit 3) naming the largest context that fits, when the plan does not fit."""
    from offload.errors import PlanError

    if not memory.fits:
        raise PlanError(
            f"{memory.ctx:,} tokens do not fit: " + "; ".join(memory.reasons)
            + f". The largest context that fits is {memory.max_ctx:,}: pass --ctx {memory.max_ctx:,}, "
            "or give more room (--host-mem, --disk-dir on a larger disk)"
        )


def load_checked(o: dict, config, memory):
    """Refuse a plan that does not fit (PlanError naming the largest context that does), then load
    the model; warn on stderr when --ctx exceeds what the model was trained on."""
    import offload

    import torch

    require_fit(memory)
    if o.get("threads"):
        torch.set_num_threads(o["threads"])
    t0 = time.perf_counter()
    model = offload.load_model(o["model"], config)
    if o.get("verbose"):
        click.echo(f"loaded {model.model_dir} on {model.device} ({model.dtype}) in "
                   f"{time.perf_counter() - t0:.1f} s; context {model.n_ctx:,} tokens; "
                   f"{torch.get_num_threads()} CPU threads", err=True)
    if o["ctx"] and model.trained_ctx and o["ctx"] > model.trained_ctx:
        click.echo(f"warning: --ctx {o['ctx']:,} is larger than the {model.trained_ctx:,} tokens this "
                   "model was trained on; answers past that may degrade", err=True)
    return model


def quiet_transformers(verbose: bool) -> None:
    """No HF progress bars or info logs unless -v: stderr is for offload's own lines."""
    if verbose:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def fail(e: BaseException, verbose: bool) -> None:
    """Every failure becomes one line on stderr and the error's exit code (1 when unexpected)."""
    import traceback

    from offload.errors import OffloadError

    if verbose:
        traceback.print_exc()
    if isinstance(e, OffloadError):
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    click.echo(f"error: unexpected {type(e).__name__}: {e} (run with -v for details)", err=True)
    sys.exit(1)
