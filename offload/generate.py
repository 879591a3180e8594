"""`generate` / `stream_generate`: one prompt in, text out, on a fresh KV store per call.

The token loop itself (`run_generation`) is shared with `Chat`, which keeps its store across turns."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .decode_threads import DecodeThreads, ThreadProbe
from .engine import Engine
from .errors import ConfigError, ContextOverflowError
from .model import OffloadModel
from .sampling import Sampler, SamplingParams
from .textstream import TextStream

__all__ = ["GenerationResponse", "generate", "stream_generate", "run_generation", "check_fits"]


@dataclass(frozen=True)
class GenerationResponse:
    """One step of a streamed generation.

    text: the new text released at this step (may be empty while a multi-byte character or a possible
        stop string is pending). token: the token id sampled at this step (None on a closing response
        that only flushes text). prompt_tokens: tokens prefilled by this call; prompt_tps their rate.
    generation_tokens / generation_tps: tokens generated so far and the decode rate (tokens after the
        first, over the time since the first). peak_*_bytes: process peaks so far. finish_reason: None
        until the last response, then "stop" (EOS or a stop string) or "length".
    kv: the KV store's stats (bytes per tier, hit counters). threads: CPU threads of the last decode
        step (`OffloadConfig.threads`; chosen by measurement when that is None, `decode_threads`).
    """

    text: str
    token: int | None
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_gpu_bytes: int
    peak_host_bytes: int
    finish_reason: str | None = None
    kv: dict = field(default_factory=dict)
    threads: int = 0


def _peak_gpu(device: torch.device) -> int:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0


def _peak_host() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def check_fits(n_prompt: int, max_new_tokens: int, n_ctx: int) -> None:
    """Raise before any compute when the prompt and the answer cannot fit the context."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if n_prompt + max_new_tokens > n_ctx:
        raise ContextOverflowError(n_prompt, n_ctx, max_new_tokens)


def run_generation(
    engine: Engine,
    new_ids: list[int],
    *,
    max_new_tokens: int,
    sampling: SamplingParams,
    stop=None,
    on_decoded: Callable[[int], None] | None = None,
    progress=None,
) -> Iterator[GenerationResponse]:
    """Prefill `new_ids` on `engine`, then sample up to `max_new_tokens` tokens, yielding each step.

    on_decoded(token) is called for every token whose KV enters the store (all generated tokens but the
    last), so a caller can keep its token list in step with the store. CPU threads: `OffloadConfig.
    threads` for the whole call, or (None, on a CPU) torch's for prefill and the count measured
    fastest while decoding (`DecodeThreads`); torch's count is restored when the call ends."""
    threads = _threads_for(engine.model)
    try:
        yield from _generation(engine, new_ids, max_new_tokens, sampling, stop, on_decoded, progress, threads)
    finally:
        threads.restore()


def _threads_for(model: OffloadModel) -> DecodeThreads:
    """The config's fixed count (one candidate), a probe over this machine's counts (CPU), or
    torch's count as it is (CUDA: the host only launches kernels)."""
    fixed = model.config.threads
    if fixed is None and model.device.type == "cpu":
        return DecodeThreads(ThreadProbe.for_machine())
    return DecodeThreads(ThreadProbe((fixed or torch.get_num_threads(),)))


def _generation(engine, new_ids, max_new_tokens, sampling, stop, on_decoded, progress, threads):
    model = engine.model
    tok = model.tokenizer
    eos = model.eos_ids
    sampler = Sampler(sampling, model.device)
    stream = TextStream(tok, [stop] if isinstance(stop, str) else stop)
    if model.config.threads:
        torch.set_num_threads(model.config.threads)
    t0 = time.perf_counter()
    logits = engine.prefill(new_ids, progress=progress)
    token = sampler(logits)
    t_first = time.perf_counter()
    prompt_tps = len(new_ids) / max(t_first - t0, 1e-9)
    n_gen = 0

    def response(text, token, finish=None):
        gen_tps = (n_gen - 1) / (time.perf_counter() - t_first) if n_gen > 1 else 0.0
        return GenerationResponse(
            text=text, token=token, prompt_tokens=len(new_ids), prompt_tps=prompt_tps,
            generation_tokens=n_gen, generation_tps=gen_tps, peak_gpu_bytes=_peak_gpu(model.device),
            peak_host_bytes=_peak_host(), finish_reason=finish, kv=engine.store.stats(),
            threads=torch.get_num_threads(),
        )

    while True:
        if token in eos:
            yield response(stream.flush(), None, "stop")
            return
        n_gen += 1
        text = stream.push(token)
        if stream.stopped:
            yield response(text, token, "stop")
            return
        if n_gen >= max_new_tokens:
            yield response(text + stream.flush(), token, "length")
            return
        yield response(text, token)
        t0 = threads.begin()
        logits = engine.decode(token)
        threads.end(t0)
        if on_decoded is not None:
            on_decoded(token)
        token = sampler(logits)


def stream_generate(
    model: OffloadModel,
    prompt_or_messages,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stop=None,
) -> Iterator[GenerationResponse]:
    """Stream the answer to a raw prompt string or a chat message list (chat template applied).

    Raises ContextOverflowError before any compute when prompt + max_new_tokens > the context."""
    sampling = SamplingParams(temperature, top_p, top_k, seed)
    ids = model.encode(prompt_or_messages)
    check_fits(len(ids), max_new_tokens, model.n_ctx)

    def steps():
        store = model.new_store()
        try:
            yield from run_generation(
                Engine(model, store), ids, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop
            )
        finally:
            store.close()

    return steps()


def generate(model: OffloadModel, prompt_or_messages, max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop=None) -> str:
    """The whole answer as a string (see `stream_generate`)."""
    return "".join(
        r.text for r in stream_generate(model, prompt_or_messages, max_new_tokens, temperature, top_p,
                                        top_k, seed, stop)
    )
