"""`next_query`: a decoder layer's query from a hidden state, through HF's own attention module, equals
the query that layer computes in a real decode step (SmolLM2: Llama; Gemma 3 in test_gemma3.py: q
norm, two rotary tables, its own scale), and writes nothing."""

import torch

from offload.attention import DecodePass
from offload.engine import Engine
from offload.next_query import next_query


class _Recording(DecodePass):
    """A decode pass that keeps each layer's query and scale."""

    def __init__(self, store):
        super().__init__(store)
        self.queries = {}

    def attend(self, layer, q, k, v, scaling, sliding_window):
        self.queries[layer] = (q.clone(), scaling)
        return super().attend(layer, q, k, v, scaling, sliding_window)


def test_the_query_from_a_layers_input_is_the_query_it_computes(model):
    check_next_query(model)


def check_next_query(model):
    """The check, for any model (test_gemma3.py runs it on Gemma 3, which needs transformers >= 5.25)."""
    store = model.new_store()
    try:
        engine = Engine(model, store)
        tok = int(engine.prefill(list(range(10, 90))).argmax())
        inputs = {}
        hooks = [layer.register_forward_pre_hook(lambda m, a, kw, i=i: inputs.__setitem__(i, (a[0], kw)),
                                                 with_kwargs=True) for i, layer in enumerate(engine._layers)]  # fmt: skip
        p = _Recording(store)
        with torch.inference_mode():
            engine._step(torch.tensor([[tok]]), engine.n_tokens, p)
        for h in hooks:
            h.remove()
        n = store.layer_len(0)
        with torch.inference_mode():
            for layer, (h, kw) in inputs.items():
                q, scaling = next_query(engine._layers[layer], h, kw["position_embeddings"], engine._cache_kw)
                want, want_scaling = p.queries[layer]
                torch.testing.assert_close(q, want, rtol=0, atol=0)
                assert scaling == want_scaling
            # the next layer's query from this layer's input: a guess, not the same query
            q1, _ = next_query(engine._layers[1], inputs[0][0], inputs[1][1]["position_embeddings"], engine._cache_kw)
            assert not torch.equal(q1, p.queries[1][0])
        assert [store.layer_len(i) for i in range(len(engine._layers))] == [n] * len(engine._layers)
    finally:
        store.close()
