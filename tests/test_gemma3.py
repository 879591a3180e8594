"""Gemma-3-270M, the second embedded model: hybrid attention (five 512-token sliding-window layers per
global one), exact against transformers' own forward and generate, in chat and across sessions."""

import json
import os

import pytest
import torch

import offload
from offload.engine import Engine
from offload.eval.corpus import natural_sentences
from offload.hybrid_store import HybridKVStore

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _text_ids(model, n: int) -> list[int]:
    ids = model.tokenizer(" ".join(natural_sentences()))["input_ids"]
    assert len(ids) >= n
    return ids[:n]


def test_hybrid_layers_and_their_store(gemma):
    windows = gemma.layer_windows
    assert len(windows) == 18 and windows.count(0) == 3 and set(windows) == {0, 512}
    store = gemma.new_store()
    assert isinstance(store, HybridKVStore) and store.inner.n_layers == 3  # only global layers reach it
    store.close()


def test_layer_major_prefill_equals_hf_forward(gemma, gemma_hf):
    ids = _text_ids(gemma, 1536)  # three windows; prefill chunks of 300 straddle their boundaries
    with torch.inference_mode():
        want = gemma_hf(torch.tensor([ids])).logits[0]
    got = Engine(gemma, gemma.new_store()).prefill(ids, chunk=300, all_logits=True)
    assert (got - want).abs().max().item() <= 1e-4


def test_greedy_32_tokens_equal_hf_generate(gemma, gemma_hf):
    ids = _text_ids(gemma, 700)  # past the window: decode reads the rings, not everything
    prompt = gemma.tokenizer.decode(ids[1:])  # without <bos>: encoding adds it back
    enc = gemma.encode(prompt)
    assert enc[0] == gemma.tokenizer.bos_token_id and enc.count(gemma.tokenizer.bos_token_id) == 1
    ours = [r.token for r in offload.stream_generate(gemma, prompt, max_new_tokens=32) if r.token is not None]
    with torch.inference_mode():
        ref = gemma_hf.generate(torch.tensor([enc]), max_new_tokens=32, do_sample=False,
                                eos_token_id=sorted(gemma.eos_ids))  # fmt: skip
    ref = [t for t in ref[0, len(enc):].tolist() if t not in gemma.eos_ids]
    assert len(ours) == 32 and ours == ref


def test_three_turn_chat_equals_recomputing(gemma):
    doc = gemma.tokenizer.decode(_text_ids(gemma, 1100)[1:])  # turn 1 alone outgrows a ring (1024)
    turns = [f"{doc}\n\nWhat is this text about?", "Say it in one word.", "And in French?"]
    with offload.Chat(gemma) as chat:
        for i, turn in enumerate(turns):
            history = chat.messages + [{"role": "user", "content": turn}]
            expected = [r.token for r in offload.stream_generate(gemma, history, max_new_tokens=12)
                        if r.token is not None]  # fmt: skip
            got = [r.token for r in chat.stream(turn, max_new_tokens=12) if r.token is not None]
            assert got == expected, f"turn {i + 1} differs"
            assert chat.store.layer_len(0) == chat.n_tokens == chat.store.layer_len(5)


def test_rewind_within_the_margin_is_exact_and_past_it_starts_over(gemma):
    ids = _text_ids(gemma, 1400)
    eng = Engine(gemma, gemma.new_store())
    eng.prefill(ids)
    assert eng.truncate(1300) == 1300  # the rings hold 1024 tokens: 1300 - 511 is still there
    got = eng.prefill(ids[1300:1310])
    want = Engine(gemma, gemma.new_store()).prefill(ids[:1310])
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
    assert eng.truncate(200) == 0  # position 200's window is gone from the rings: start over
    assert all(eng.store.layer_len(i) == 0 for i in range(18))


def test_session_saves_sliding_layers_as_their_ring_and_reopens_exactly(gemma, tmp_path):
    ids = _text_ids(gemma, 1100)
    with offload.Chat(gemma) as chat:
        chat.send(gemma.tokenizer.decode(ids[1:]) + "\n\nSummarize.", max_new_tokens=4)
        chat.save_session(tmp_path / "s")
        n = chat.n_tokens
        expected = [r.token for r in chat.stream("Go on.", max_new_tokens=16) if r.token is not None]
    header = json.loads((tmp_path / "s" / "header.json").read_text())["body"]
    assert header["n_tokens"] == n and header["windows"] == list(gemma.layer_windows)
    assert header["layer_lens"] == [1024 if w else n for w in gemma.layer_windows]  # window + margin
    sizes = [os.path.getsize(tmp_path / "s" / f"layer_{i:03d}.kv") for i in range(18)]
    assert sizes[0] * n == pytest.approx(sizes[5] * 1024, rel=0.02)  # a ring's bytes, not the context's
    with offload.Chat(gemma) as again:
        again.load_session(tmp_path / "s")
        assert again.store.layer_len(0) == again.store.layer_len(5) == n
        rs = list(again.stream("Go on.", max_new_tokens=16))
        assert rs[0].prompt_tokens < 40  # only the new turn was prefilled: the rings rewound within their margin
    assert [r.token for r in rs if r.token is not None] == expected


def test_sparse_decode_selects_on_global_layers_only(gemma):
    cfg = gemma.config.replace(sparse=offload.SparseConfig(budget=1 / 8))
    sparse = offload.OffloadModel(hf=gemma.hf, tokenizer=gemma.tokenizer, config=cfg, model_dir=gemma.model_dir)
    ids = _text_ids(gemma, 1200)
    dense_eng, sparse_eng = Engine(gemma, gemma.new_store()), Engine(sparse, sparse.new_store())
    a, b = dense_eng.prefill(ids), sparse_eng.prefill(ids)
    assert torch.equal(a, b)  # prefill is exact whatever the store
    for _ in range(4):
        tok = int(a.argmax())
        a, b = dense_eng.decode(tok), sparse_eng.decode(tok)
    store = sparse_eng.store
    assert store.inner.selector.plan is not None and store.inner.n_layers == 3
    assert torch.isfinite(b).all() and int(b.argmax()) == int(a.argmax())


def test_eval_prompts_are_completion_form_with_one_bos(gemma, model):
    from offload.eval.needle_probe import forced_answer
    from offload.eval.recall import natural_ids
    from offload.eval.tasks import generate_sample

    sample = generate_sample("multi_needle", gemma.tokenizer, 1024, 0)
    assert "<start_of_turn>" not in sample.prompt  # a base model reads the document and continues it
    bos = gemma.tokenizer.bos_token_id
    for ids in (gemma.encode(sample.prompt), forced_answer(gemma.tokenizer, sample)[0],
                natural_ids(gemma.tokenizer, 300)):  # fmt: skip
        assert ids[0] == bos and ids.count(bos) == 1
    chat = gemma.encode([{"role": "user", "content": "hi"}])
    assert chat[0] == bos and chat.count(bos) == 1  # the turn format's own <bos>, not a second one
    smol = model.encode([{"role": "user", "content": "hi"}])  # SmolLM2: its template, nothing added
    assert smol == model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                                       tokenize=True, return_dict=True)["input_ids"]  # fmt: skip


def test_attention_recall_covers_the_global_layers_only(gemma, gemma_hf):
    from fractions import Fraction

    from offload.eval.recall import attention_recall

    (r,) = attention_recall(gemma_hf, gemma.tokenizer, ["token"], [Fraction(1, 4)], n_context=1024, n_steps=2)
    assert r.layers == (5, 11, 17) and len(r.per_layer) == 3
    assert all(0.3 < x <= 1.0 for x in r.per_layer)


def test_offload_chat_by_short_name(gemma):
    from click.testing import CliRunner

    from offload.cli.chat import main

    doc = gemma.tokenizer.decode(_text_ids(gemma, 600)[1:])
    r = CliRunner().invoke(main, ["-m", "gemma3-270m", "-f", "-", "-p", "What is this about?", "-n", "8"], input=doc)
    assert r.exit_code == 0, r.output
    assert "tok/s" in r.stderr and r.stdout.strip()


def test_older_transformers_are_refused_clearly():
    from offload.embedded import check_transformers, embedded

    check_transformers(embedded("gemma3-270m"), "5.25.0")
    check_transformers(embedded("gemma3-270m"), "6.0.1")
    check_transformers(embedded("smollm2"), "5.17.0")
    with pytest.raises(offload.ModelFileError, match="needs transformers >= 5.25"):
        check_transformers(embedded("gemma3-270m"), "5.17.0")


def test_next_query_reads_the_query_through_gemmas_attention(gemma):
    """q norm, a rotary table per layer type and Gemma's own scale: the lookahead's query is the query."""
    from test_next_query import check_next_query  # tests/ is on sys.path (rootdir import)

    check_next_query(gemma)
