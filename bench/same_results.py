#!/usr/bin/env python
"""Same results before and after a refactor: record what the sparse-decode pipeline computes, then diff.

Runs the checkout at --repo (cwd=PATH, PYTHONPATH=PATH for every subprocess; OFFLOAD_* variables are
dropped) only through command-line interfaces whose flags are meant to stay stable:
  recall     offload-eval --recall POLICIES --budgets 1/16,1/32 --recall-length L (L = 4k, 8k):
             mean, per-layer recall and tokens read per policy@budget (parsed from its table);
  needle     bench/needle_probe.py --length 4k --samples S --json: every row (dense + policy@budget);
  agreement  bench/agreement.py --context 4k --new N --json: forced / prefix / match per row;
  greedy     offload-chat (`python -m offload` entry point) -p QUESTION -f DOC -n 64 --temp 0, once
             --dense and once per policy at --budget 1/16: the answer text (the CLI prints no ids).
The eval and chat entry points are read from the checkout's pyproject.toml ([project.scripts]), so a
module moved by the refactor is still found. DOC is the checkout's examples/lighthouse.md cut at a
paragraph break (~3.5k tokens), written next to --out; its sha256 is recorded. Decode speed is not
recorded. The JSON is rewritten after every step (greedy, agreement, needle, recall 4k, recall 8k: the
cheapest first), so a cut-short run keeps what it measured. Full sizes: needle --samples 1, agreement
--new 16, greedy -n 64 on ~3.5k tokens. Measured on 2 CPU cores shared with another job (load 2-6):
20 min in all (greedy 543 s, agreement 169 s, needle 79 s, recall 4k 126 s, recall 8k 286 s).

    python bench/same_results.py --repo /tmp/before --out /tmp/same/before.json
    python bench/same_results.py --repo /work/main --out /tmp/same/after.json
    python bench/same_results.py --compare /tmp/same/before.json /tmp/same/after.json   # exit 1 if any differs
--quick: small sizes (1k contexts, fewer policies, 8 new tokens) for a smoke run, not for comparing
with a full run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

POLICIES = "bound,token,quest,landmark,snapkv,h2o"
RECALL_POLICIES = POLICIES + ",token+adaptive"  # adaptive: the store's default layer split
BUDGETS = "1/16,1/32"
QUESTION = "What is the name of the keeper's cat, and when was the lighthouse built?"
FULL = dict(recall_lengths=["4k", "8k"], recall_policies=RECALL_POLICIES, needle_length="4k",
            needle_samples=1, agree_context="4k", agree_new=16, doc_chars=15000, chat_new=64,
            chat_policies=POLICIES)  # fmt: skip
QUICK = dict(recall_lengths=["1k"], recall_policies="bound,landmark", needle_length="1k",
             needle_samples=1, agree_context="1k", agree_new=4, doc_chars=2500, chat_new=8,
             chat_policies="token")  # fmt: skip
RECALL_DECIMALS = 3


def child_env(repo: Path) -> dict:
    """The environment of every subprocess: the checkout first on sys.path, no OFFLOAD_* overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    env.update(PYTHONPATH=str(repo), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def entry_argv(repo: Path, script: str) -> list[str]:
    """python argv running console script `script` of the checkout (its pyproject's module:function)."""
    with open(repo / "pyproject.toml", "rb") as f:
        target = tomllib.load(f)["project"]["scripts"][script]
    module, func = target.split(":")
    code = f"import sys; sys.argv[0] = {script!r}; from {module} import {func}; {func}()"
    return [sys.executable, "-c", code]


def run(repo: Path, argv: list[str], what: str) -> str:
    """Run argv in the checkout; stdout, or RuntimeError with the stderr tail."""
    t0 = time.perf_counter()
    print(f"[{what}] {' '.join(argv[2:] if argv[1] == '-c' else argv[1:])}", file=sys.stderr, flush=True)
    p = subprocess.run(argv, cwd=repo, env=child_env(repo), capture_output=True, text=True)
    print(f"[{what}] rc {p.returncode}, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if p.returncode != 0:
        raise RuntimeError(f"rc {p.returncode}: {p.stderr.strip()[-1500:]}")
    return p.stdout


def parse_recall(text: str) -> dict:
    """offload-eval's recall table (layers down, policy@budget across, then mean and read rows)."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:1] == ["layer"])
    labels = lines[head].split()[1:]
    cols = {label: {"per_layer": []} for label in labels}
    for line in lines[head + 1:]:
        parts = line.split()
        if len(parts) != len(labels) + 1:
            break
        for label, v in zip(labels, parts[1:]):
            if parts[0].isdigit():
                cols[label]["per_layer"].append(float(v))
            else:
                cols[label][parts[0]] = float(v)  # "mean", "read"
    return cols


def recall_rows(repo: Path, s: dict, length: str) -> dict:
    out = run(repo, entry_argv(repo, "offload-eval") + [
        "--recall", s["recall_policies"], "--budgets", BUDGETS, "--recall-length", length,
        "--no-progress"], f"recall {length}")  # fmt: skip
    return {f"recall {length} {label}": col for label, col in parse_recall(out).items()}


def jsonl_run(repo: Path, script: str, args: list[str], what: str) -> list[dict]:
    """Run a bench script with --json into a temporary file; its rows."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        run(repo, [sys.executable, f"bench/{script}", *args, "--json", str(path)], what)
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


NEEDLE_FIELDS = ("value_tokens", "value_total", "needles_exact", "needles_total", "value_acc",
                 "ratio_to_dense", "kv_chunk", "select_unit")
AGREE_FIELDS = ("budget_tokens", "forced_agreement", "free_prefix", "free_match", "first_forced_miss",
                "kv_chunk", "select_unit")


def needle_rows(repo: Path, s: dict) -> dict:
    rows = jsonl_run(repo, "needle_probe.py", ["--length", s["needle_length"], "--samples",
                     str(s["needle_samples"]), "--policies", POLICIES, "--budgets", BUDGETS], "needle")  # fmt: skip
    return {f"needle {s['needle_length']} {r['config']}": {k: r.get(k) for k in NEEDLE_FIELDS} for r in rows}


def agreement_rows(repo: Path, s: dict) -> dict:
    rows = jsonl_run(repo, "agreement.py", ["--context", s["agree_context"], "--new", str(s["agree_new"]),
                     "--policies", POLICIES, "--budgets", BUDGETS], "agreement")  # fmt: skip
    out = {}
    for r in rows:
        name = r["policy"] + (f"+{r['layer_budget']}" if r.get("layer_budget") not in (None, "adaptive") else "")
        out[f"agreement {s['agree_context']} {name if r['budget'] is None else name + '@' + r['budget']}"] = {k: r.get(k) for k in AGREE_FIELDS}
    return out


def make_document(repo: Path, chars: int, out_dir: Path) -> Path:
    """The checkout's sample document, cut at the first paragraph break after `chars` characters."""
    text = (repo / "examples" / "lighthouse.md").read_text(encoding="utf-8")
    cut = text.find("\n\n", chars)
    text = text if cut < 0 else text[:cut] + "\n"
    path = out_dir / f"same_results_doc_{chars}.md"
    path.write_text(text, encoding="utf-8")
    return path


def greedy_rows(repo: Path, s: dict, out_dir: Path) -> dict:
    doc = make_document(repo, s["doc_chars"], out_dir)
    sha = hashlib.sha256(doc.read_bytes()).hexdigest()
    base = entry_argv(repo, "offload-chat") + ["-f", str(doc), "-p", QUESTION, "-n", str(s["chat_new"]),
                                               "--temp", "0"]  # fmt: skip
    runs = [("dense", ["--dense"])] + [(f"{p}@1/16", ["--budget", "1/16", "--policy", p])
                                       for p in s["chat_policies"].split(",")]  # fmt: skip
    rows = {}
    for name, extra in runs:
        row = {"doc_sha256": sha, "doc_chars": s["doc_chars"], "max_new_tokens": s["chat_new"]}
        try:
            row["text"] = run(repo, base + extra, f"greedy {name}")
        except RuntimeError as e:
            row["error"] = str(e)
        rows[f"greedy {name}"] = row
    return rows


def git_head(repo: Path) -> str | None:
    p = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    return p.stdout.strip() or None


def save(path: Path, meta: dict, rows: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    tmp.replace(path)


def record(repo: Path, out: Path, quick: bool) -> int:
    sizes = QUICK if quick else FULL
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"repo": str(repo), "commit": git_head(repo), "quick": quick, "sizes": sizes,
            "policies": POLICIES, "budgets": BUDGETS, "question": QUESTION, "seconds": {}}  # fmt: skip
    rows, failed, t_all = {}, 0, time.perf_counter()
    # cheapest first, the long recall runs last: a run cut short keeps the most steps
    steps = [("greedy", lambda: greedy_rows(repo, sizes, out.parent)),
             ("agreement", lambda: agreement_rows(repo, sizes)), ("needle", lambda: needle_rows(repo, sizes))]
    steps += [(f"recall {n}", lambda n=n: recall_rows(repo, sizes, n)) for n in sizes["recall_lengths"]]
    for name, step in steps:
        t0 = time.perf_counter()
        try:
            rows.update(step())
        except Exception as e:  # one broken tool must not hide the others' results
            rows[f"{name} FAILED"] = {"error": f"{type(e).__name__}: {e}"}
            failed += 1
        meta["seconds"][name] = round(time.perf_counter() - t0)
        meta["seconds"]["total"] = round(time.perf_counter() - t_all)
        save(out, meta, rows)
    failed += sum("error" in r for k, r in rows.items() if not k.endswith("FAILED"))
    print(f"wrote {len(rows)} rows to {out} in {meta['seconds']['total']} s ({failed} failed)", flush=True)
    return 1 if failed else 0


def normalized(key: str, row: dict) -> dict:
    """What the comparison looks at: recall rounded to RECALL_DECIMALS, everything else exact."""
    if not key.startswith("recall "):
        return row
    rnd = lambda v: round(v, RECALL_DECIMALS) if isinstance(v, float) else v  # noqa: E731
    return {k: [rnd(x) for x in v] if isinstance(v, list) else rnd(v) for k, v in row.items()}


def summary(key: str, row: dict | None) -> str:
    """One short cell per row for the side-by-side listing."""
    if row is None:
        return "(missing)"
    if "error" in row:
        return "ERROR " + row["error"].splitlines()[0][:40]
    if key.startswith("recall "):
        return f"mean {row.get('mean', float('nan')):.3f} read {row.get('read', 0):.0f}"
    if key.startswith("needle "):
        return f"value {row['value_acc']:.4f} needles {row['needles_exact']}/{row['needles_total']}"
    if key.startswith("agreement "):
        return f"forced {row['forced_agreement']:.4f} prefix {row['free_prefix']} match {row['free_match']:.4f}"
    return json.dumps(row.get("text", ""))[:60]


def compare(a_path: str, b_path: str) -> int:
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    ra, rb = a["rows"], b["rows"]
    keys = list(ra) + [k for k in rb if k not in ra]
    width = max(len(k) for k in keys)
    print(f"A = {a_path} ({a['meta'].get('commit')})\nB = {b_path} ({b['meta'].get('commit')})")
    if a["meta"].get("sizes") != b["meta"].get("sizes"):
        print("WARNING: the two runs used different sizes (--quick against full?)")
    differ = 0
    for k in keys:
        same = k in ra and k in rb and "error" not in ra[k] and normalized(k, ra[k]) == normalized(k, rb[k])
        differ += not same
        print(f"{k:<{width}} | {summary(k, ra.get(k)):<62} | {summary(k, rb.get(k)):<62} | "
              f"{'IDENTICAL' if same else 'DIFFERENT'}")
        if not same and k in ra and k in rb:
            na, nb = normalized(k, ra[k]), normalized(k, rb[k])
            for f in sorted(set(na) | set(nb)):
                if na.get(f) != nb.get(f):
                    print(f"    {f}: {json.dumps(na.get(f))[:200]}  vs  {json.dumps(nb.get(f))[:200]}")
    print(f"{len(keys) - differ} identical, {differ} different of {len(keys)} rows")
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, help="checkout whose code and bench scripts to run")
    ap.add_argument("--out", type=Path, help="JSON file to write")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="diff two recorded runs")
    a = ap.parse_args()
    if a.compare:
        return compare(*a.compare)
    if not (a.repo and a.out):
        ap.error("--repo and --out are required (or --compare A.json B.json)")
    return record(a.repo.resolve(), a.out.resolve(), a.quick)


if __name__ == "__main__":
    sys.exit(main())
