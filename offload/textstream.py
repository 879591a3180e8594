"""Turning generated token ids into streamed text: incremental detokenization and stop strings.

Text is released only when it is final: a trailing replacement character (an incomplete UTF-8
sequence) and any suffix that could still grow into a stop string are held back."""

from __future__ import annotations

__all__ = ["TextStream"]


class TextStream:
    """Feed token ids one by one; `push` returns the new final text, `stopped` tells a stop string hit."""

    def __init__(self, tokenizer, stop: list[str] | tuple[str, ...] | None = None):
        self._tok = tokenizer
        self._stop = [s for s in (stop or []) if s]
        self._ids: list[int] = []
        self._emitted = 0  # characters of the decoded text already released
        self.text = ""  # the full final text so far (stop string excluded)
        self.stopped = False

    def _decode(self) -> str:
        return self._tok.decode(self._ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        self._ids.append(token)
        full = self._decode()
        for s in self._stop:
            at = full.find(s)
            if at != -1:
                self.stopped = True
                full = full[:at]
                break
        if not self.stopped:
            if full.endswith("\ufffd"):
                return ""  # an incomplete multi-byte character: wait for the next token
            hold = 0
            for s in self._stop:  # longest suffix of `full` that is a proper prefix of a stop string
                for n in range(min(len(s) - 1, len(full)), 0, -1):
                    if full.endswith(s[:n]):
                        hold = max(hold, n)
                        break
            full_final = full[: len(full) - hold]
        else:
            full_final = full
        delta = full_final[self._emitted :]
        self._emitted = max(self._emitted, len(full_final))
        self.text += delta
        return delta

    def flush(self) -> str:
        """At the end of generation: release what was held back (no stop string can complete now)."""
        if self.stopped:
            return ""
        full = self._decode().rstrip("\ufffd")
        delta = full[self._emitted :]
        self._emitted = len(full)
        self.text += delta
        return delta
