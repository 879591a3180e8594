"""One prompt prefilled once, then decoded under many store configurations (policies x budgets).

offload's prefill is exact whatever the store (every layer attends over its full KV in the prefill
working buffer), so what a sparse store holds after prefill depends only on the prompt: its keys and
values, and the statistics `prefill_observer` receives (the prompt's last queries for snapkv/h2o,
cos(h, h + attn(h)) for SqueezeAttention). `Prefilled.capture` runs the engine once over a dense
store that also records those statistics; `Prefilled.store_for(model)` builds a fresh store for
`model.config` and feeds it exactly what the engine's own prefill would have (one `append` per layer,
then the observer), so decoding from it equals prefilling under that config — at the cost of a copy
instead of a forward. The eval runner uses it so 10 sparse modes of an 8k prompt pay one prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine import Engine
from ..kvstore import DenseKVStore
from ..sparse.prefill_stats import OBS_TAIL

__all__ = ["Prefilled", "greedy_continue", "greedy_many"]


class _RecordingStore(DenseKVStore):
    """A dense store whose prefill observer keeps each layer's statistics (see module doc)."""

    obs_window = OBS_TAIL  # what a sparse store observes (StoreSpec.obs_window)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.observed: dict[int, tuple] = {}

    @property
    def prefill_observer(self):
        def observe(layer, q_tail, keys, scaling, attn_cos):
            # keys are the layer's whole KV buffer: re-read from the store at replay, not kept twice
            tail = None if q_tail is None else q_tail.clone()
            self.observed[layer] = (tail, scaling, attn_cos)

        return observe


@dataclass
class Prefilled:
    """A prompt's KV per layer (dense store), its prefill statistics and last-token logits [V]."""

    ids: list[int]
    store: _RecordingStore
    logits: torch.Tensor

    @classmethod
    def capture(cls, model, ids: list[int]) -> "Prefilled":
        """Prefill `ids` once with `model` (any config: only its weights and prefill_chunk are used)."""
        n_layers, n_kv, d = model.kv_shape()
        store = _RecordingStore(n_layers, n_kv, d, dtype=model.dtype, device=model.device)
        logits = Engine(model, store).prefill(ids)
        return cls(list(ids), store, logits)

    def store_for(self, model):
        """A new store for `model.config` holding the prompt, as if its own prefill had run."""
        store = model.new_store()
        observe = getattr(store, "prefill_observer", None)
        try:
            for layer in range(self.store.n_layers):
                k, v = self.store.read_layer(layer)
                store.append(layer, k, v)
                if observe is not None:
                    q_tail, scaling, attn_cos = self.store.observed[layer]
                    observe(layer, q_tail, k, scaling, attn_cos)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        self.store.close()


@torch.inference_mode()
def greedy_continue(model, prefilled: Prefilled, max_new_tokens: int, eos: frozenset[int] = frozenset(),
                    forced: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Greedy decode after `prefilled` under `model.config`: returns (tokens, argmaxes).

    tokens: what was fed back, stopping after an `eos` token; forced: feed these tokens instead of
    the argmax (teacher forcing, e.g. the reference's answer), while `argmaxes` still records what
    this config would have picked at each step."""
    store = prefilled.store_for(model)
    try:
        engine = Engine(model, store)
        logits, tokens, picks = prefilled.logits, [], []
        n = max_new_tokens if forced is None else min(max_new_tokens, len(forced))
        for i in range(n):
            pick = int(logits.argmax())
            tok = pick if forced is None else forced[i]
            picks.append(pick)
            tokens.append(tok)
            if tok in eos or i == n - 1:
                break
            logits = engine.decode(tok)
        return tokens, picks
    finally:
        store.close()


@torch.inference_mode()
def greedy_many(models: list, prefilled: Prefilled, max_new_tokens: int,
                eos: frozenset[int] = frozenset(), forced: list[int] | None = None) -> list[list[int]]:
    """`greedy_continue` for several configs of one model at once (same weights): rows decode in
    lockstep through `Engine.decode_rows`, a row leaves the batch at its end-of-sequence token.
    Returns each config's tokens (its eos token included, as greedy_continue); with `forced`, every
    row is fed those tokens (teacher forcing, no eos stop) and the return is each row's argmaxes."""
    stores = []
    try:
        for m in models:
            stores.append(prefilled.store_for(m))
        engine = Engine(models[0], stores[0])
        out: list[list[int]] = [[] for _ in models]
        active = list(range(len(models)))
        logits = prefilled.logits[None].expand(len(models), -1)
        n = max_new_tokens if forced is None else min(max_new_tokens, len(forced))
        for step in range(n):
            picks = logits.argmax(-1).tolist()
            still = []
            for row, j in enumerate(active):
                out[j].append(picks[row])
                if forced is not None:
                    still.append((j, forced[step]))
                elif picks[row] not in eos:
                    still.append((j, picks[row]))
            if not still or step == n - 1:
                break
            active = [j for j, _ in still]
            logits = engine.decode_rows([t for _, t in still], [stores[j] for j in active])
        return out
    finally:
        for s in stores:
            s.close()
