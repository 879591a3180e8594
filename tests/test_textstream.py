"""Incremental detokenization and stop strings, with the real tokenizer."""

from offload.textstream import TextStream


def _feed(tok, text, stop):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    s = TextStream(tok, stop)
    out = []
    for i in ids:
        out.append(s.push(i))
        if s.stopped:
            break
    out.append(s.flush())
    return "".join(out), s


def test_stream_reassembles_text_including_multibyte(model):
    text = "Café au lait — naïve façade, 東京 🚀 done."
    joined, s = _feed(model.tokenizer, text, None)
    assert joined == text and s.text == text and not s.stopped


def test_stop_string_cuts_and_partial_prefix_is_held(model):
    tok = model.tokenizer
    joined, s = _feed(tok, "alpha beta STOPHERE gamma", ["STOPHERE"])
    assert s.stopped and joined == "alpha beta " and s.text == "alpha beta "
    # A suffix that may start a stop string is not released until it cannot.
    s = TextStream(tok, ["xyz"])
    released = "".join(s.push(i) for i in tok("hello x", add_special_tokens=False)["input_ids"])
    assert released == "hello "
    assert s.flush() == "x"
