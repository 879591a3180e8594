"""Why a sparse mode lost an answer: at the decode step where it parts from exact attention, which
layers and heads missed how much of the attention the answer's source tokens get, and why.

Teacher forcing: both configs are fed the reference's answer tokens; the first answer token the
sparse config would not have picked is the step explained (step 0 is the prefill's, always exact).
The sparse store is replayed to that step from the shared prefill, the selector's `select` is
watched for one step (the query, the selection, the row budgets), and every layer's whole KV is read
back from the store to compute the exact attention of that query. The *source* is the tokens of the
lost reference inside the needle that holds it. Per query head:

- source mass: exact attention on the source; captured: the part of it on tokens the step read
  (sinks + window + the head's selection); recall: the mass the step read in all (exactly: a
  rest, SparseConfig.rest, attends the remainder at low precision and is not counted as read).
- exact rank: how many body tokens an oracle of the same unit would take before the best source
  token (exact attention summed over the KV head's group); policy rank: the same by the policy's
  own scores; row budget: tokens this KV head could select.

Cause of a head's loss (source mass not captured): `sketch` — an oracle at the same budget keeps the
source (exact rank < budget) but the policy's scores rank it past the budget; `split` — the oracle
misses it at this row's budget but would keep it at the layer's uniform share; `budget` — it misses
it even at the uniform share. `kept` where >= 90 % of the source mass was read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine import Engine
from .errors import EvalError
from .replay import Prefilled, greedy_many

__all__ = ["HeadLoss", "Explanation", "source_span", "divergence", "explain_step", "format_explanation"]


@dataclass(frozen=True)
class HeadLoss:
    layer: int
    head: int
    source_mass: float
    captured: float
    recall: float
    row_budget: int | None  # None: the layer read densely (budget covers it) or whole
    exact_rank: int
    policy_rank: int | None
    cause: str

    @property
    def lost(self) -> float:
        return self.source_mass * (1 - self.captured)


@dataclass(frozen=True)
class Explanation:
    step: int  # answer token index explained
    wanted: int  # the reference's token there
    got: int  # the sparse config's argmax
    source: tuple[int, int]  # [a, b) prompt positions of the lost reference
    heads: tuple[HeadLoss, ...]  # every (layer, query head), layer-major

    def lost_by_cause(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for h in self.heads:
            out[h.cause] = out.get(h.cause, 0.0) + h.lost
        return out


def source_span(tokenizer, sample, reference: str, n_special: int = 0) -> tuple[int, int]:
    """[a, b) token positions (in the encoded prompt) of `reference` inside the needle holding it;
    n_special: tokens the model's encode adds before the text."""
    needle = next((n.strip() for n in sample.needles if reference in n), None)
    if needle is None:
        raise EvalError(f"{sample.task}: no needle holds {reference!r} (only needle tasks can be explained)")
    start = sample.prompt.index(needle) + needle.index(reference)
    end = start + len(reference)
    enc = tokenizer(sample.prompt, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < end and e > start]
    return inside[0] + n_special, inside[-1] + 1 + n_special


def divergence(dense_model, sparse_model, prefilled: Prefilled, answer: list[int]) -> int | None:
    """The first answer index where the sparse config, fed the reference's answer, would pick
    another token; None when it picks every one."""
    picks = greedy_many([dense_model, sparse_model], prefilled, len(answer), forced=answer)
    for i, (want, got) in enumerate(zip(answer, picks[1])):
        if want != got:
            return i
    return None


def _watch(selector, seen: dict) -> None:
    """Record each layer's (q, selection, n_chunks, n_tokens, scaling) of the next step."""
    select = selector.select

    def watched(layer, q, n_chunks, n_tokens, scaling=None):
        out = select(layer, q, n_chunks, n_tokens, scaling)
        seen[layer] = (q.clone(), None if out is None else out.clone(), n_chunks, n_tokens, scaling)
        return out

    selector.select = watched  # this store only lives for the explanation


@torch.inference_mode()
def explain_step(sparse_model, prefilled: Prefilled, answer: list[int], step: int,
                 source: tuple[int, int]) -> Explanation:  # fmt: skip
    """Replay `sparse_model` (a sparse config of the prefilled model) to answer token `step` (>= 1)
    and explain its attention to `source` (module doc)."""
    if step < 1:
        raise EvalError("step 0 is predicted by the prefill, which is exact: nothing to explain")
    store = prefilled.store_for(sparse_model)
    try:
        engine = Engine(sparse_model, store)
        for tok in answer[: step - 1]:
            engine.decode(tok)
        seen: dict = {}
        sel = store.sparse_attention.selector
        _watch(sel, seen)
        logits = engine.decode(answer[step - 1])
        heads = []
        for layer in range(store.n_layers):
            heads += _layer_heads(store, sel, layer, seen.get(layer), source)
        return Explanation(step, answer[step], int(logits.argmax()), source, tuple(heads))
    finally:
        store.close()


def _layer_heads(store, sel, layer, seen, source) -> list[HeadLoss]:
    lay = store.layout
    k, _ = store.read_layer(layer)  # [B, Hkv, n, D]
    b, hkv, n, d = k.shape
    if seen is None:
        raise EvalError(f"layer {layer} attended without its selector (not a sparse store?)")
    q, chosen, m, n_tokens, scaling = seen
    h = q.shape[1]
    g = h // hkv
    scale = d**-0.5 if scaling is None else scaling
    logits = torch.einsum("bkgd,bknd->bkgn", q.float().view(b, hkv, g, d), k.float()) * scale
    attn = torch.softmax(logits, dim=-1)[0]  # [Hkv, G, n]
    s, body = lay.sinks, m * lay.chunk
    read = torch.zeros(hkv, n, dtype=torch.bool)
    read[:, :s] = True
    read[:, s + body:] = True
    unit = 1 if sel.tokens else lay.chunk
    rows = sel.budgets(n_tokens).rows[layer]
    uniform = sel.plan.uniform(n_tokens)
    if chosen is None:
        read[:] = True
    else:
        for r in range(hkv):
            units = chosen[r][chosen[r] >= 0]
            read[r, s + (units[:, None] * unit + torch.arange(unit)).reshape(-1)] = True
    a, z = source
    scores = None
    if chosen is not None and not sel.is_whole(layer, m, n_tokens):
        kk = max(rows) // unit
        rk = sel.row_budgets(layer, n_tokens)
        rk = None if rk is None or not sel.tokens else torch.tensor(rk).view(1, hkv, 1)
        scores = sel.state.scores(layer, q, m, kk, scale, rk)[0].float()  # [Hkv, units]
    out = []
    for r in range(hkv):
        group_mass = attn[r].sum(0)[s: s + body]  # exact, per body token
        per_unit = group_mass.view(-1, unit).sum(-1)
        src_units = sorted({(p - s) // unit for p in range(a, z) if s <= p < s + body})
        exact_rank = min((int((per_unit > per_unit[u]).sum()) for u in src_units), default=0)
        policy_rank = None
        if scores is not None and src_units:
            policy_rank = min(int((scores[r] > scores[r][u]).sum()) for u in src_units)
        row_k = None if chosen is None or scores is None else rows[r if len(rows) > 1 else 0] // unit
        for gi in range(g):
            mass = attn[r, gi]
            src = float(mass[a:z].sum())
            cap = float(mass[a:z][read[r, a:z]].sum()) / src if src > 0 else 1.0
            out.append(HeadLoss(layer, r * g + gi, src, cap, float(mass[read[r]].sum()),
                                row_k, exact_rank, policy_rank, _cause(cap, row_k, exact_rank, policy_rank,
                                                                       uniform // unit)))
    return out


def _cause(captured, row_k, exact_rank, policy_rank, uniform_k) -> str:
    if captured >= 0.9 or row_k is None:
        return "kept"
    if exact_rank < row_k:
        return "sketch" if policy_rank is None or policy_rank >= row_k else "kept"
    return "split" if exact_rank < uniform_k else "budget"


def format_explanation(e: Explanation, tokenizer, top: int = 12) -> str:
    """The step, the lost mass by cause, the per-layer loss and the heads that lost the most."""
    tok = lambda t: repr(tokenizer.decode([t]))  # noqa: E731
    total = sum(h.source_mass for h in e.heads)
    lost = sum(h.lost for h in e.heads)
    lines = [f"answer token {e.step}: wanted {tok(e.wanted)}, sparse picks {tok(e.got)}; source tokens "
             f"{e.source[0]}..{e.source[1] - 1}; source mass summed over heads {total:.2f}, not read "
             f"{lost:.2f} ({lost / total:.0%})" if total else "no attention on the source"]
    causes = ", ".join(f"{c} {v:.2f}" for c, v in sorted(e.lost_by_cause().items(), key=lambda x: -x[1]) if v > 0)
    lines.append(f"lost source mass by cause: {causes or 'none'}")
    layers: dict[int, list[HeadLoss]] = {}
    for h in e.heads:
        layers.setdefault(h.layer, []).append(h)
    per_layer = ", ".join(f"L{li} {sum(x.lost for x in hs):.2f}/{sum(x.source_mass for x in hs):.2f}"
                          for li, hs in layers.items() if sum(x.lost for x in hs) >= 0.01)
    lines.append(f"lost/source mass per layer (>= 0.01): {per_layer or 'none'}")
    lines.append("layer head  source  captured  recall  row_k  exact_rank  policy_rank  cause")
    for h in sorted(e.heads, key=lambda x: -x.lost)[:top]:
        if h.lost < 1e-3:
            break
        lines.append(f"{h.layer:>5} {h.head:>4}  {h.source_mass:6.3f}  {h.captured:8.2f}  {h.recall:6.3f}  "
                     f"{'-' if h.row_budget is None else h.row_budget:>5}  {h.exact_rank:>10}  "
                     f"{'-' if h.policy_rank is None else h.policy_rank:>11}  {h.cause}")
    return "\n".join(lines)
