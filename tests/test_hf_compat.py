"""The HF seam across transformers 5.17-5.25: the cache keyword read from signatures, no deprecation
notices, and pass objects that take what `update` is called with."""

import inspect
import warnings

import torch
import transformers

import offload
from offload.attention import DecodePass, PrefillPass
from offload.hf_compat import cache_keyword, output_cache


class _OldLayer(torch.nn.Module):  # the shape of a decoder layer before transformers 5.25
    def forward(self, hidden_states, past_key_values=None, **kwargs):
        return hidden_states


class _NoCache(torch.nn.Module):
    def forward(self, hidden_states):
        return hidden_states


def test_cache_keyword_follows_the_installed_transformers(model):
    layer = model.hf.model.layers[0]
    params = inspect.signature(type(layer).forward).parameters
    want = "cache" if "cache" in params else "past_key_values"
    assert cache_keyword(layer) == want == cache_keyword(model.hf)
    # 5.25 is the release that renamed it; 5.17-5.23 take past_key_values
    major_minor = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    assert want == ("cache" if major_minor >= (5, 25) else "past_key_values")


def test_cache_keyword_of_other_shapes():
    assert cache_keyword(_OldLayer()) == "past_key_values"
    try:
        cache_keyword(_NoCache())
    except TypeError as e:
        assert "no KV cache argument" in str(e)
    else:
        raise AssertionError("a forward without a cache argument must be refused")


def test_output_cache_reads_the_models_output(hf_model):
    out = hf_model(torch.tensor([[1, 2, 3]]), use_cache=True)
    cache = output_cache(out)
    assert cache.get_seq_length() == 3


def test_generate_raises_no_deprecation_warning(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        assert offload.generate(model, "The capital of France is", max_new_tokens=2)


def test_passes_take_the_keywords_update_gets():
    k = torch.zeros(1, 1, 2, 4)
    p = PrefillPass(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4), 0)
    kk, _ = p.update(k, k, 0, kwargs={"offload_pass": p})  # transformers >= 5.25 passes kwargs=...
    assert kk.shape == (1, 1, 2, 4)
    assert "kwargs" in inspect.signature(DecodePass.update).parameters
