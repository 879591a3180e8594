"""`WindowRing`: the KV of one sliding-window layer (Gemma 3's local layers), on the compute device.

A sliding-window layer's query at position p reads keys p - window < pos <= p and nothing older, so
its KV never grows past the window: it is never tiered, never selected and never saved beyond the
window and its rewind margin. The ring holds the last `keep` tokens (keep = window + a rewind margin, so a chat that rewinds
a few tokens — a re-rendered answer — keeps exact attention without recomputing) in one contiguous
buffer of `ring_capacity(keep)` tokens (keep + a quarter) that is compacted when full (the kept tokens
move to the front once per keep/4 appends, no per-token copy; attention always reads one slice).

`count` is every position the layer has seen (the sequence length); `held` the tokens in the buffer,
the last `held` of those positions.
"""

from __future__ import annotations

import torch

from .kernels.dispatch import causal_prefill_attention

__all__ = ["WindowRing", "ring_capacity"]


def ring_capacity(keep: int) -> int:
    """Tokens a ring that keeps `keep` allocates: keep + keep/4 of slack (at least 16)."""
    return keep + max(16, keep // 4)


class WindowRing:
    """window: the layer's sliding window; margin: extra tokens kept so `truncate` can rewind that far;
    shape: (B, Hkv, D)."""

    def __init__(self, window: int, margin: int, shape: tuple[int, int, int], dtype, device):
        if window < 1 or margin < 0:
            raise ValueError(f"a window ring needs window >= 1 and margin >= 0, got {window}, {margin}")
        self.window, self.keep = window, window + margin
        b, h, d = shape
        self._k = torch.empty(b, h, ring_capacity(self.keep), d, dtype=dtype, device=device)
        self._v = torch.empty_like(self._k)
        self._start = self._held = 0  # buffer offset of the oldest held token; tokens held
        self.count = 0

    @property
    def held(self) -> int:
        return self._held

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add t >= 1 tokens [B, Hkv, t, D]; only the last `keep` of the sequence stay."""
        t = k.shape[2]
        self.count += t
        if t >= self.keep:  # a prompt longer than the ring: only its tail matters
            self._k[:, :, : self.keep] = k[:, :, t - self.keep :]
            self._v[:, :, : self.keep] = v[:, :, t - self.keep :]
            self._start, self._held = 0, self.keep
            return
        end = self._start + self._held
        if end + t > self._k.shape[2]:  # full: move the tokens that stay to the front
            stay = min(self._held, self.keep - t)
            src = slice(end - stay, end)
            self._k[:, :, :stay] = self._k[:, :, src].clone()
            self._v[:, :, :stay] = self._v[:, :, src].clone()
            self._start, self._held, end = 0, stay, stay
        self._k[:, :, end : end + t] = k
        self._v[:, :, end : end + t] = v
        self._held += t
        if self._held > self.keep:
            self._start += self._held - self.keep
            self._held = self.keep

    def advance(self, n: int) -> None:
        """Count n positions the ring never held (a saved session's tokens before its window)."""
        if self._held:
            raise ValueError("advance only before the first append")
        self.count += n

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held tokens (the window and what the margin keeps), oldest first: k, v [B, Hkv, held, D]
        views. A session saves these, so a reopened chat can still rewind within the margin."""
        end = self._start + self._held
        return self._k[:, :, self._start : end], self._v[:, :, self._start : end]

    def attend(self, q: torch.Tensor, scaling: float) -> torch.Tensor:
        """q [B, H, Lq, D], the last Lq positions (already appended) -> [B, Lq, H, D]; exact
        sliding-window attention when the ring holds window - 1 tokens before the first query."""
        n = min(self._held, self.window + q.shape[2] - 1)
        end = self._start + self._held
        return causal_prefill_attention(q, self._k[:, :, end - n : end], self._v[:, :, end - n : end], scaling,
                                        self.window)  # fmt: skip

    def can_rewind(self, n: int) -> bool:
        """Whether the ring still holds what a sequence cut to n tokens attends to at its next token:
        the window - 1 positions before n (or all of them from 0)."""
        first = self.count - self._held
        return n >= self.count or first <= max(0, n - (self.window - 1))

    def truncate(self, n: int) -> None:
        """Forget positions >= n; ValueError when `can_rewind(n)` is false (the caller starts over)."""
        if n >= self.count:
            return
        if not self.can_rewind(n):
            raise ValueError(f"a window ring at {self.count} tokens holding {self._held} cannot rewind to {n}")
        self._held -= self.count - n
        self.count = n
        if self._held == 0:
            self._start = 0

    def reset(self) -> None:
        self._start = self._held = self.count = 0

    @property
    def nbytes(self) -> int:
        return 2 * self._k.numel() * self._k.element_size()
