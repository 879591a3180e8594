"""`Chat`: a conversation whose KV stays in the store across turns.

Each turn renders the whole conversation with the chat template, keeps the longest prefix of tokens
already in the store, rewinds the store to it and prefills only the rest. Rendering the full history
(rather than appending a guessed suffix) makes a turn exactly what recomputing the conversation from
scratch would process, whatever the template does around assistant messages."""

from __future__ import annotations

from typing import Iterator

from .engine import Engine
from .generate import GenerationResponse, check_fits, run_generation
from .model import OffloadModel
from .sampling import SamplingParams

__all__ = ["Chat"]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Chat:
    """A multi-turn conversation with `model`. Use as a context manager or call `close()`."""

    def __init__(self, model: OffloadModel, system: str | None = None):
        self.model = model
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.store = model.new_store()
        self.engine = Engine(model, self.store)
        self.tokens: list[int] = []  # ids whose KV is in the store, in order

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def stream(self, content: str, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
               top_k: int = 0, seed: int | None = None, stop=None, progress=None) -> Iterator[GenerationResponse]:
        """Add a user turn and stream the answer. Checks the context before any compute. If the stream is
        closed early (Ctrl-C), the partial answer stays in the conversation. progress(done, total) is
        called after each prefilled layer (layers done, layers, new tokens)."""
        sampling = SamplingParams(temperature, top_p, top_k, seed)
        turn = self.messages + [{"role": "user", "content": content}]
        ids = self.model.encode(turn)
        check_fits(len(ids), max_new_tokens, self.model.n_ctx)
        return self._steps(turn, ids, max_new_tokens, sampling, stop, progress)

    def _steps(self, turn, ids, max_new_tokens, sampling, stop, progress):
        keep = min(_common_prefix(self.tokens, ids), len(ids) - 1)  # prefill needs >= 1 token
        self.engine.truncate(keep)
        self.tokens = self.tokens[:keep]
        new = ids[keep:]
        parts: list[str] = []
        try:
            gen = run_generation(
                self.engine, new, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop,
                on_decoded=self.tokens.append, progress=progress,
            )
            first = True
            for r in gen:
                if first:  # the prompt is in the store now
                    self.tokens[keep:keep] = new
                    first = False
                parts.append(r.text)
                yield r
        finally:
            if self.store.layer_len(0) != len(self.tokens):
                # interrupted inside prefill or decode: the store's tail is unknown, drop it
                n = min(self.store.layer_len(0), len(self.tokens))
                self.engine.truncate(n)
                self.tokens = self.tokens[:n]
            self.messages = turn + [{"role": "assistant", "content": "".join(parts)}]

    def send(self, content: str, **kwargs) -> str:
        """Add a user turn; return the whole answer."""
        return "".join(r.text for r in self.stream(content, **kwargs))

    def clear(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages = [m for m in self.messages if m["role"] == "system"][:1]
        self.engine.truncate(0)
        self.tokens = []

    def save_session(self, path) -> None:
        """Save the conversation (KV, tokens, messages) to the session directory `path`, atomically."""
        from .session import save_session

        save_session(path, self.store, self.tokens, self.model.fingerprint(),
                     meta={"messages": self.messages}, chunk=self.model.config.chunk)

    def load_session(self, path) -> None:
        """Replace this conversation with the one saved at `path` (no prefill). Raises SessionError
        for a session of another model or a damaged one; the current conversation is kept then."""
        from .session import load_session, read_session_info

        info = read_session_info(path)
        store, tokens = load_session(path, self.model.fingerprint(), self.model.config,
                                     device=self.model.device, dtype=self.model.dtype)
        self.store.close()
        self.store, self.tokens = store, tokens
        self.engine = Engine(self.model, store)
        self.messages = list(info.meta.get("messages", []))

    def close(self) -> None:
        self.store.close()
