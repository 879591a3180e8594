"""Helpers the bench scripts share (imported as `_common`: scripts run as `python bench/x.py`)."""

from __future__ import annotations

import json
import os
import platform
import time


def machine() -> str:
    """CPU model and core count (platform.processor() is empty on Linux)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cpus"


def sync(device) -> None:
    """Wait for the device (CUDA); nothing on a CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_gbps(device, host: bool) -> float:
    """GB/s of a device-to-device copy (bytes read + written) or a pinned host-to-device copy."""
    import torch

    n = (256 << 20) if host or device.type == "cpu" else (1 << 30)
    src = torch.empty(n, dtype=torch.uint8, pin_memory=host and device.type == "cuda")
    src = src if host else src.to(device)
    dst = torch.empty(n, dtype=torch.uint8, device=device)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return n * (1 if host else 2) / best / 1e9


def add_sparse_args(ap, policies: str, budgets: str, json_rows: str) -> None:
    """The options every sparse-decode bench takes (policies, budgets, prompt seed, threads, JSON)."""
    ap.add_argument("--policies", default=policies, help="comma list; POLICY+SPLIT sets the split over layers (uniform, squeeze; default adaptive), POLICY/REST the rest (none, k4v2, ...)")
    ap.add_argument("--budgets", default=budgets, help="fractions of the context (or token counts)")
    ap.add_argument("--seed", type=int, default=0, help="start of the natural-text prompt")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help=f"append one JSON row per {json_rows} to this file")
    ap.add_argument("--model", default=None, help="embedded model name (smollm2, gemma3-270m) or local path; "
                    "default: the embedded SmolLM2")


def budget_of(text: str) -> int | float:
    """A --budgets entry: `1/16` a fraction of the context, `2048` a token count."""
    num, den = text.split("/") if "/" in text else (text, "1")
    return float(num) / float(den) if "/" in text else int(text)


def spy_selections(store) -> dict:
    """Each layer's selection as the store's selector makes it ({layer: ids [R, k]}, None left out):
    the dict it fills, for the caller to clear before each step."""
    seen: dict = {}
    select = store.selector.select

    def spy(layer, *args, **kw):
        out = select(layer, *args, **kw)
        if out is not None:
            seen[layer] = out
        return out

    store.selector.select = spy
    return seen


def text_grid(ap, table_head: str):
    """The SmolLM2 grid of chunk_union.py and row_prefetch.py: adds --lengths, --budgets, --new and
    --threads to `ap`, parses, loads the model, prints the machine line and `table_head` (or
    `table_head(a)`), then yields
    (model, n, ids, budget text, budget) per (length, budget) on a natural-text prompt, and `a` first."""
    import offload
    import torch
    from offload.cli.units import parse_count
    from offload.eval.recall import natural_ids

    ap.add_argument("--lengths", default="4k,8k")
    ap.add_argument("--budgets", default="1/16,1/32")
    ap.add_argument("--new", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    a = parse_with_threads(ap)
    yield a
    model = offload.load_model()
    print(f"# {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, SmolLM2 fp32")
    print(table_head(a) if callable(table_head) else table_head)
    for n in [parse_count(x) for x in a.lengths.split(",")]:
        ids = natural_ids(model.tokenizer, n)
        for b in a.budgets.split(","):
            yield model, n, ids, b, budget_of(b)


def parse_with_threads(ap):
    """ap.parse_args(), then torch's thread count from --threads (left alone when unset)."""
    import torch

    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    return a


_ALIASES = {"layer_budget": "split", "select_unit": "unit", "bound_share": "share"}  # names before #21


def with_sparse(config, spec: str, budget, **fields):
    """`config` decoding sparse: policy `spec` ("NAME", "NAME+SPLIT", either with "/REST": the rest,
    e.g. token/none) at `budget` (tokens or a fraction), then `with_fields`."""
    from offload.config import SparseConfig
    from offload.eval.modes import policy_rest, split_policy

    name, split = split_policy(spec)
    rest = policy_rest(spec)
    sparse = SparseConfig(budget=budget, policy=name, split=split, **({} if rest is None else {"rest": rest}))
    return with_fields(config.replace(sparse=sparse), **fields)


def policy_split(spec: str) -> tuple[str, str]:
    """(the policy with its "/REST" if any, the split): how the benches name a row."""
    from offload.eval.modes import policy_rest, split_policy

    name, split = split_policy(spec)
    rest = policy_rest(spec)
    return (name if rest is None else f"{name}/{rest}"), split


def with_fields(config, **fields):
    """`config` with fields changed wherever they live: OffloadConfig (kv_chunk, ...), its SparseConfig
    (budget, split, whole_below, select_every) or its policy's parameters (rank, share, unit); the
    names used before the SparseConfig grouping are accepted (layer_budget, select_unit, bound_share).
    ConfigError / TypeError for a bad value or an unknown name."""
    import dataclasses

    top, sparse, policy = {}, {}, {}
    sparse_names = {f.name for f in dataclasses.fields(config.sparse)} if config.sparse else set()
    for key, value in fields.items():
        key = _ALIASES.get(key, key)
        if key in sparse_names:
            sparse[key] = value
        elif config.sparse is not None and key in {f.name for f in dataclasses.fields(config.sparse.policy)}:
            policy[key] = value
        else:
            top[key] = value
    if policy:
        sparse["policy"] = dataclasses.replace(config.sparse.policy, **policy)
    if sparse:
        top["sparse"] = dataclasses.replace(config.sparse, **sparse)
    return config.replace(**top) if top else config


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return None if text == "none" else text


def set_fields(spec: str) -> dict:
    """--set "kv_chunk=8,share=0.5" -> {"kv_chunk": 8, "share": 0.5} (numbers cast, "none" -> None);
    "" -> {}."""
    if not spec:
        return {}
    pairs = [p.split("=", 1) for p in spec.split(",")]
    if any(len(p) != 2 or not p[0].strip() for p in pairs):
        raise SystemExit(f"--set takes KEY=VALUE[,KEY=VALUE...], got {spec!r}")
    return {k.strip(): _value(v.strip()) for k, v in pairs}


def unit_facts(config) -> dict:
    """What a row selects in: its chunk, whether it picks single tokens or chunks, and its rest (None:
    a run without sparse decode selects nothing; rest "none": what is not selected is dropped)."""
    from offload.store_spec import StoreSpec

    sp = config.sparse
    tokens = sp is not None and sp.policy.selects_tokens
    unit = None if sp is None else "token" if tokens else "chunk"
    rest = None if sp is None else "none" if sp.rest is None else sp.rest.label
    return {"kv_chunk": StoreSpec.chunk_of(config), "select_unit": unit, "rest": rest}


def emit(args, name, rows):
    """Print `rows` (dicts with the same keys) as one table titled `name`; with args.json append each
    row to that JSONL file."""
    import torch

    if not rows:
        return
    keys = list(rows[0])
    print(f"\n# {name}  ({platform.node()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')})")
    print("  ".join(f"{k:>12}" for k in keys))
    for r in rows:
        print("  ".join(f"{r[k]:>12.3f}" if isinstance(r[k], float) else f"{r[k]!s:>12}" for k in keys))
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps({"bench": name, "machine": platform.node(), **r}) + "\n")


class CompetingLoad:
    """`with CompetingLoad(n):` n other processes each spinning one core (the last n cores), as a
    user's other programs would: a stand-in for a busy laptop. n = 0: nothing."""

    def __init__(self, n: int):
        if n < 0 or n > (os.cpu_count() or 1):
            raise SystemExit(f"error: --load must be in [0, {os.cpu_count()}], got {n}")
        self.n, self._procs = n, []

    def __enter__(self):
        import subprocess
        import sys

        cores = sorted(os.sched_getaffinity(0))
        for i in range(self.n):
            p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            os.sched_setaffinity(p.pid, {cores[-1 - i % len(cores)]})
            self._procs.append(p)
        time.sleep(0.5 if self.n else 0)  # the spinners are running before anything is timed
        return self

    def __exit__(self, *exc):
        for p in self._procs:
            p.kill()
            p.wait()
        self._procs.clear()
