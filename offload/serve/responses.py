"""The JSON an OpenAI client expects back, for one request: whole answers and streamed chunks of
`chat.completion` / `text_completion`, with `usage` (cached prompt tokens included) and llama-server's
`timings` (prompt ms and tok/s, generation tok/s), which the chat page shows as its speed line."""

from __future__ import annotations

import json
import time
import uuid

from .worker import Outcome

__all__ = ["Answer", "sse"]


def sse(data) -> bytes:
    """One server-sent event: `data: <json>` (or the literal `[DONE]`) and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class Answer:
    """Builds the response objects of one request. kind: "chat" or "completion"."""

    def __init__(self, kind: str, model: str):
        self.chat = kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created, self.model = int(time.time()), model

    def _envelope(self, choices: list, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": "offload", "choices": choices}  # fmt: skip

    def _choice(self, text: str | None, finish: str | None, chunk: bool, role: bool = False) -> dict:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if chunk:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        message = {"role": "assistant", "content": text, "refusal": None}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}

    def opening(self) -> dict | None:
        """The first chunk of a chat stream (the assistant role, no text); None for completions."""
        return self._envelope([self._choice(None, None, True, role=True)], True) if self.chat else None

    def piece(self, text: str) -> dict:
        return self._envelope([self._choice(text, None, True)], True)

    def closing(self, outcome: Outcome) -> dict:
        """The last chunk with a choice: finish_reason and timings."""
        return {**self._envelope([self._choice(None, outcome.finish_reason, True)], True),
                "timings": outcome.timings()}  # fmt: skip

    def usage_chunk(self, outcome: Outcome) -> dict:
        """`stream_options.include_usage`: a chunk with no choices and the usage."""
        return {**self._envelope([], True), "usage": outcome.usage()}

    def whole(self, text: str, outcome: Outcome) -> dict:
        return {**self._envelope([self._choice(text, outcome.finish_reason, False)], False),
                "usage": outcome.usage(), "timings": outcome.timings()}  # fmt: skip
