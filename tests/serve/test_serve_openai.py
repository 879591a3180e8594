"""offload-serve through the official `openai` client: answers equal offload.generate's (greedy), the
usage and timings are there, a follow-up reuses the processed prefix, and nothing goes out."""

import openai
import pytest

import offload

DOC = ("Harbour log. " + "The tide turned and the nets were dried on the wall. " * 30
       + "The keeper of the lighthouse is called Ottilie Brand. " + "Gulls circled the pier. " * 30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def _chat(question):
    return [{"role": "system", "content": "Answer from the document.\n\n" + DOC}, {"role": "user", "content": question}]


def test_models_lists_the_one_model(client):
    models = client.models.list().data
    assert len(models) == 1 and models[0].id.startswith("SmolLM2")
    assert client.models.retrieve(models[0].id).model_extra["context_length"] == 8192
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_equals_generate_and_reports_usage(client, model):
    messages = _chat("Who keeps the lighthouse?")
    r = client.chat.completions.create(model="any", messages=messages, max_tokens=10, temperature=0)
    assert r.choices[0].message.content == offload.generate(model, messages, max_new_tokens=10)
    assert r.choices[0].finish_reason in ("stop", "length") and r.object == "chat.completion"
    n_prompt = len(model.encode(messages))
    assert r.usage.prompt_tokens == n_prompt and 0 < r.usage.completion_tokens <= 10
    assert r.usage.total_tokens == n_prompt + r.usage.completion_tokens
    timings = r.model_extra["timings"]
    assert timings["prompt_n"] + timings["cache_n"] == n_prompt and timings["predicted_n"] == r.usage.completion_tokens
    assert timings["prompt_per_second"] > 0 and timings["prompt_ms"] > 0


def test_stats_say_which_decode_ran_and_the_last_request(client, server, model):
    """GET /stats: the decode `--budget auto` chose (exact: SmolLM2's 8k KV fits this machine's
    memory), the queue, and the last request's tokens, speed and KV counters per step."""
    import httpx

    messages = _chat("What is the keeper called?")
    r = client.chat.completions.create(model="m", messages=messages, max_tokens=4, temperature=0)
    stats = httpx.get(server.url + "/stats", timeout=60).json()
    assert stats["status"] == "ok" and stats["decode"] == "exact" and stats["queue"] == 0
    last = stats["last_request"]
    assert last["completion_tokens"] == r.usage.completion_tokens and last["prompt_tokens"] == r.usage.prompt_tokens
    assert last["kv_per_step"]["tokens"] >= r.usage.prompt_tokens and last["predicted_n"] == r.usage.completion_tokens


def test_follow_up_prefills_only_the_new_tokens(client, model):
    first = _chat("Who keeps the lighthouse?")
    a = client.chat.completions.create(model="m", messages=first, max_tokens=8, temperature=0)
    follow = first + [{"role": "assistant", "content": a.choices[0].message.content},
                      {"role": "user", "content": "What dried on the wall?"}]  # fmt: skip
    b = client.chat.completions.create(model="m", messages=follow, max_tokens=8, temperature=0)
    cached = b.usage.prompt_tokens_details.cached_tokens
    assert cached >= len(model.encode(first)) - 8  # the document and the first turn were not prefilled again
    assert b.model_extra["timings"]["prompt_n"] == b.usage.prompt_tokens - cached
    assert b.choices[0].message.content == offload.generate(model, follow, max_new_tokens=8)  # reuse is exact


def test_streaming_chat_with_usage(client, model):
    messages = _chat("What circled the pier?")
    chunks = list(client.chat.completions.create(model="m", messages=messages, max_tokens=10, temperature=0,
                                                  stream=True, stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == offload.generate(model, messages, max_new_tokens=10)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == len(model.encode(messages))


def test_completions_stream_and_not(client, model):
    prompt = "The three primary colours are"
    whole = client.completions.create(model="m", prompt=prompt, max_tokens=8, temperature=0)
    expected = offload.generate(model, prompt, max_new_tokens=8)
    assert whole.choices[0].text == expected and whole.object == "text_completion"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="m", prompt=prompt, max_tokens=8, temperature=0, stream=True) if c.choices)  # fmt: skip
    assert streamed == expected
    again = client.completions.create(model="m", prompt=prompt, max_tokens=8, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1  # >= 1 token runs


def test_stop_seed_and_max_completion_tokens(client, model):
    prompt = "Count: 1, 2, 3, 4,"
    full = client.completions.create(model="m", prompt=prompt, max_tokens=12, temperature=0).choices[0].text
    stop = full.strip().split(",")[1].strip()  # a number the answer reaches
    cut = client.completions.create(model="m", prompt=prompt, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].text
    assert full.startswith(cut.choices[0].text)
    sampled = [client.completions.create(model="m", prompt="Once upon a time", max_tokens=8, temperature=1.0,
                                         seed=7).choices[0].text for _ in range(2)]  # fmt: skip
    assert sampled[0] == sampled[1]
    r = client.chat.completions.create(model="m", messages=_chat("Who?"), max_completion_tokens=3, temperature=0)
    assert r.usage.completion_tokens <= 3


def test_nothing_goes_out(server, client, outbound_attempts):
    client.models.list()
    assert outbound_attempts(server.log()) == []
