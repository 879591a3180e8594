"""`Chat`: a conversation whose KV stays in the store across turns.

Each turn renders the whole conversation with the chat template, keeps the longest prefix of tokens
already in the store, rewinds the store to it and prefills only the rest. Rendering the full history
(rather than appending a guessed suffix) makes a turn exactly what recomputing the conversation from
scratch would process, whatever the template does around assistant messages."""

from __future__ import annotations

from typing import Iterator

from .engine import Engine
from .errors import SessionError
from .generate import GenerationResponse, check_fits, run_generation
from .model import OffloadModel
from .sampling import SamplingParams

__all__ = ["Chat"]

_ROLES = ("system", "user", "assistant")


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _checked_messages(messages, path) -> list[dict]:
    """A session's saved conversation, checked: it is rendered with the chat template at the next turn,
    so anything but role/content string pairs would fail there, long after the load."""
    ok = isinstance(messages, list) and all(
        isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in _ROLES
        and isinstance(m["content"], str) for m in messages)  # fmt: skip
    if not ok:
        raise SessionError(f"{path}: the session's saved messages are not a list of "
                           "{role, content} strings; the session cannot be used")  # fmt: skip
    return [dict(m) for m in messages]


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
        """Add a user turn and stream the answer. Checks the context before any compute. A turn stopped
        early is removed whole if no answer token came yet (Ctrl-C during prefill, a full disk), else
        kept whole with its partial answer (Ctrl-C mid-answer): never a question without its answer. progress(done, total) is
        called after each prefilled layer (layers done, layers, new tokens)."""
        sampling = SamplingParams(temperature, top_p, top_k, seed)
        turn = self.messages + [{"role": "user", "content": content}]
        ids = self.model.encode(turn)
        check_fits(len(ids), max_new_tokens, self.model.n_ctx)
        return self._steps(turn, ids, max_new_tokens, sampling, stop, progress)

    def _steps(self, turn, ids, max_new_tokens, sampling, stop, progress):
        keep = min(_common_prefix(self.tokens, ids), len(ids) - 1)  # prefill needs >= 1 token
        keep = self.engine.truncate(keep)  # fewer when the store cannot rewind that far
        self.tokens = self.tokens[:keep]
        new = ids[keep:]
        parts: list[str] = []
        first = True  # no answer token yet
        try:
            gen = run_generation(
                self.engine, new, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop,
                on_decoded=self.tokens.append, progress=progress,
            )
            for r in gen:
                if first:  # the prompt is in the store now
                    self.tokens[keep:keep] = new
                    first = False
                parts.append(r.text)
                yield r
        finally:
            if first:  # stopped before the answer began (Ctrl-C in prefill, an error): drop the turn whole
                self.tokens = self.tokens[: self.engine.truncate(keep)]
            else:
                if self.store.layer_len(0) != len(self.tokens):
                    # interrupted inside decode: the store's tail is unknown, drop it
                    n = self.engine.truncate(min(self.store.layer_len(0), len(self.tokens)))
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
                     meta={"messages": self.messages})

    def load_session(self, path) -> None:
        """Replace this conversation with the one saved at `path` (no prefill). Raises SessionError
        for a session of another model or a damaged one; the current conversation is kept then."""
        from .session import load_session, read_session_info

        n_layers, n_kv_heads, head_dim = self.model.kv_shape()
        expect = dict(n_layers=n_layers, n_kv_heads=n_kv_heads, head_dim=head_dim, batch=1,
                      vocab_size=len(self.model.tokenizer))  # fmt: skip
        info = read_session_info(path, expect, self.model.fingerprint())
        messages = _checked_messages(info.meta.get("messages", []), path)
        store, tokens = load_session(path, self.model.fingerprint(), self.model.config, device=self.model.device,
                                     dtype=self.model.dtype, expect=expect, planned_hot_set=self.model.planned_hot_set)
        self.store.close()
        self.store, self.tokens = store, tokens
        self.engine = Engine(self.model, store)
        self.messages = messages

    def close(self) -> None:
        self.store.close()
