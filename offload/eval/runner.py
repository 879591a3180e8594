"""The runner: for each (task, length, sample, mode) generate the greedy answer and score it.

Every mode reads the same token ids (`model.encode(sample.prompt)`) and its answer is decoded the same
way (the new token ids up to the first end-of-sequence token, special tokens skipped), so `full` and
`dense` are compared token for token. Samples are generated once per (task, length, index) and shared
by all modes; single-needle tasks spread their needle depths evenly over the samples.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .haystack import spread_depths
from .modes import Mode, sparse_config
from .replay import Prefilled, greedy_many
from .sample import Sample
from .scoring import score
from .tasks import get_task

__all__ = [
    "Record", "run_eval", "plan_samples", "answer_full", "sample_seed",
]


@dataclass(frozen=True)
class Record:
    """One scored answer. score in [0, 1]; tokens: the answer's token ids (EOS excluded)."""

    task: str
    length: int
    mode: str
    policy: str | None
    index: int
    seed: str
    depth: float | None
    n_prompt_tokens: int
    score: float
    prediction: str
    references: tuple[str, ...]
    tokens: tuple[int, ...]
    seconds: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Record":
        return cls(**{**d, "references": tuple(d["references"]), "tokens": tuple(d["tokens"])})

    @property
    def column(self) -> str:
        """The table column: `full`, `dense`, or `policy@budget` (e.g. `quest@1/16`)."""
        if self.policy is None or not self.mode.startswith("sparse@"):
            return self.mode
        return f"{self.policy}@{self.mode[len('sparse@'):]}"

    @property
    def key(self) -> tuple:
        """What identifies the answer: the same key means the same prompt and mode."""
        return (self.task, self.length, self.mode, self.policy, self.index, self.seed)


def sample_seed(seed: int, index: int) -> str:
    return f"{seed}:{index}"


def plan_samples(task: str, tokenizer, length: int, samples: int, seed: int) -> list[Sample]:
    """The samples of one (task, length) cell: deterministic for (task, length, samples, seed)."""
    t = get_task(task)
    depths = spread_depths(samples) if t.single_needle else [None] * samples
    return [t.generate(tokenizer, length, sample_seed(seed, i), depths[i]) for i in range(samples)]


def _until_eos(tokens: Sequence[int], eos: frozenset[int]) -> list[int]:
    out = []
    for t in tokens:
        if t in eos:
            break
        out.append(int(t))
    return out


@torch.inference_mode()
def answer_full(reference, model, ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy answer of the stock transformers model (HF `generate`, sdpa attention)."""
    from transformers import GenerationConfig

    eos = sorted(model.eos_ids)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos[0]
    )
    input_ids = torch.tensor([ids], device=reference.device)
    out = reference.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config
    )
    return _until_eos(out[0, len(ids):].tolist(), model.eos_ids)


def _mode_model(model, mode: Mode, policy: str | None, n_prompt: int, length: int, select_every: int = 1):
    """`model` under the config a mode runs with (weights and tokenizer shared, nothing reloaded).
    The context is raised to the eval length when that exceeds the model's, so both modes see the
    same positions."""
    base = model.config
    if length > model.n_ctx:
        base = base.replace(ctx=length)
    if mode.kind == "sparse":
        base = sparse_config(base, mode, policy, n_prompt, select_every)
    return model if base is model.config else dataclasses.replace(model, config=base)


def _jobs(modes: Sequence[Mode], policies: Sequence[str]) -> list[tuple[Mode, str | None]]:
    """(mode, policy) pairs to run: every sparse mode once per policy, other modes once."""
    out = []
    for m in modes:
        out += [(m, p) for p in policies] if m.kind == "sparse" else [(m, None)]
    return out


def run_eval(
    model,
    *,
    tasks: Sequence[str],
    lengths: Sequence[int],
    modes: Sequence[Mode],
    samples: int = 10,
    limit: int | None = None,
    rows: int = 8,
    seed: int = 0,
    policy: str | Sequence[str] | None = None,
    reference=None,
    max_new_tokens: int | None = None,
    progress: bool = True,
    on_record: Callable[[Record], None] | None = None,
    done: Sequence[Record] = (),
    select_every: int = 1,
) -> list[Record]:
    """Score every (task, length, sample, mode); returns the records in run order.

    model: an OffloadModel (offload.load_model); reference: the stock HF model for `full` (loaded
    with offload.loading.load_reference when needed and not given). Order: lengths ascending, then
    tasks, samples and modes, so short cells finish first and `on_record` (e.g. a JSON writer) keeps
    partial results. Sparse modes fail before any compute when the policy is not available.
    limit: run only the first `limit` samples of each cell (same prompts as all `samples`).
    max_new_tokens caps every task's answer budget (quick runs, tests); prompts keep their lengths.
    done: records of an interrupted run with the same settings: their answers are not recomputed
    (samples are deterministic), they are returned in place.
    policy: one policy or several (`NAME` or `NAME+squeeze`); every sparse mode runs once per policy.
    select_every: the sparse modes' `SparseConfig.select_every`.
    A sample's offload (mode, policy) pairs — dense and sparse — share one exact prefill
    (`replay.Prefilled`) and decode together as rows of batches of at most `rows`
    (`replay.greedy_many`; each row holds its own copy of the prompt's KV, so `rows` bounds memory);
    each record's `seconds` is the sample's offload time divided by its rows. `dense` (exact
    attention) is then the cheap reference: one prefill serves it and every sparse mode.
    """
    from tqdm.auto import tqdm

    for t in tasks:
        get_task(t)
    policies = [policy] if isinstance(policy, str) or policy is None else list(policy)
    jobs = _jobs(modes, policies)
    for m, p in jobs:
        if m.kind == "sparse":
            _mode_model(model, m, p, 1024, 1024)  # fail fast on a bad policy
    if reference is None and any(m.kind == "full" for m in modes):
        from ..loading import load_reference

        reference = load_reference(model)
    tok = model.tokenizer
    finished = {r.key: r for r in done}
    records: list[Record] = []
    total = len(tasks) * len(lengths) * min(samples, limit or samples) * len(jobs)
    bar = tqdm(total=total, file=sys.stderr, disable=not progress, unit="answer", dynamic_ncols=True)

    def emit(sample, i, task, length, mode, pol, ids, new, seconds):
        pred = tok.decode(new, skip_special_tokens=True)
        rec = Record(
            task=task, length=length, mode=mode.label, policy=pol, index=i, seed=sample.seed,
            depth=sample.depths[0] if len(sample.depths) == 1 else None, n_prompt_tokens=len(ids),
            score=score(pred, sample.references, sample.metric), prediction=pred,
            references=sample.references, tokens=tuple(new), seconds=seconds,
        )
        records.append(rec)
        if on_record is not None:
            on_record(rec)
        bar.update(1)

    try:
        for length in sorted(lengths):
            for task in tasks:
                for i, sample in enumerate(plan_samples(task, tok, length, samples, seed)[:limit]):
                    ids = model.encode(sample.prompt)
                    n_new = min(sample.max_new_tokens, max_new_tokens or sample.max_new_tokens)
                    sparse = []  # offload (mode, policy) pairs still to run: decoded together below
                    for mode, pol in jobs:
                        key = (task, length, mode.label, pol, i, sample.seed)
                        if key in finished:
                            records.append(finished[key])
                            bar.update(1)
                        elif mode.kind != "full":  # dense and sparse: offload, from one prefill
                            sparse.append((mode, pol))
                        else:
                            bar.set_postfix_str(f"{task} {length} {mode.label} #{i}", refresh=False)
                            t0 = time.perf_counter()
                            new = answer_full(reference, model, ids, n_new)
                            emit(sample, i, task, length, mode, pol, ids, new, time.perf_counter() - t0)
                    if sparse:
                        # one exact prefill, then every offload config decodes from it in one batch
                        bar.set_postfix_str(f"{task} {length} {len(sparse)} offload #{i}", refresh=False)
                        t0 = time.perf_counter()
                        shared = Prefilled.capture(_mode_model(model, Mode("dense"), None, len(ids), length),
                                                   ids)
                        try:
                            ms = [_mode_model(model, mode, pol, len(ids), length, select_every) for mode, pol in sparse]
                            outs = []
                            for r0 in range(0, len(ms), rows):
                                outs += greedy_many(ms[r0 : r0 + rows], shared, n_new, model.eos_ids)
                        finally:
                            shared.close()
                        each = (time.perf_counter() - t0) / len(sparse)
                        for (mode, pol), out in zip(sparse, outs):
                            new = _until_eos(out, model.eos_ids)
                            emit(sample, i, task, length, mode, pol, ids, new, each)
    finally:
        bar.close()
    return records
