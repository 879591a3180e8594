"""Choosing the next token: greedy or temperature / top-k / top-p sampling with a seeded generator.

The warpers are transformers' own (`TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`),
applied in the order HF `generate` applies them, so a seeded run is reproducible and behaves as users
of HF expect."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ConfigError

__all__ = ["SamplingParams", "Sampler"]


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 = off; top_p 1.0 = off; seed None = nondeterministic."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"temperature must be a finite number >= 0, got {t!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 < p <= 1.0):
            raise ConfigError(f"top_p must be in (0, 1], got {p!r}")
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"top_k must be an integer >= 0, got {k!r}")
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0):
            raise ConfigError(f"seed must be a non-negative integer or None, got {s!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Stateful: owns the random generator, so consecutive draws of one generation differ but the whole
    sequence is reproducible for a seed."""

    def __init__(self, params: SamplingParams, device: torch.device):
        from transformers import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.params = params
        self._warpers = LogitsProcessorList()
        if not params.greedy:
            self._warpers.append(TemperatureLogitsWarper(float(params.temperature)))
            if params.top_k:
                self._warpers.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                self._warpers.append(TopPLogitsWarper(float(params.top_p)))
        # Draw on the CPU: the same seed gives the same tokens on every device.
        self._gen = torch.Generator(device="cpu")
        if params.seed is not None:
            self._gen.manual_seed(params.seed)
        else:
            self._gen.seed()

    def __call__(self, logits: torch.Tensor, history: torch.Tensor | None = None) -> int:
        """logits: [V] float. history: [1, n] token ids (unused by these warpers; kept for the API)."""
        if self.params.greedy:
            return int(torch.argmax(logits))
        scores = self._warpers(history, logits.float().view(1, -1))
        probs = torch.softmax(scores, dim=-1).cpu()
        return int(torch.multinomial(probs, 1, generator=self._gen))
