"""The rest: every body token kept at low precision, so what a sparse step did not select is still
attended (MiKV, "no token left behind"; issue 22).

Why: at budgets 1/16-1/32 the selection reads 93-97 % of the attention that a copied value's tokens
get, and still loses answers on structured records: a diffuse head reads 0.07-0.5 of its mass, and
renormalising over what it read moves a digit's logit enough to flip a near-tie
(bench/results/extract-4k.md). Attending the unselected body tokens at low precision, merged with
the selected part by log-sum-exp, gives those answers back: with K at 4 bits and V at 2 bits every
loss of session 13's 4k run was kept, but a record lookup that dropping the rest had kept was lost
(a 2-bit value flips a digit); V at 4 bits keeps it, so the default is K 4 / V 4; K at 2 bits or V
at 1 bit lost them all (bench/results/extract-rest.md).

`Rest` (the spec, SparseConfig.rest): bits of K and V levels and the channels that share one scale
and minimum (asymmetric uniform levels per token and group). `RestCopies` (the mechanism, owned by
the `Selector`, fed the body chunks the store emits): per layer, levels packed 8 // bits to a byte,
tokens last ([R, D * bits / 8, N] uint8: the step is matmuls over tokens), scales and minimums
[R, D / group, 2, N] in fp16 beside bf16/fp16 KV (fp32 beside fp32; levels use the stored, rounded
values). Per token and KV head:
D * (kb + vb) / 8 + 8 * D / group bytes: at head_dim 128 and group 32, 5/16 of bf16 K+V (k4v4),
1/4 (k4v2).
`attend` gives the rest's part of a step: out and log-sum-exp over the body tokens a row did not
read, for `merge_partials` with the selected part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import ConfigError

__all__ = ["Rest", "RestCopies", "parse_rest"]

_BITS = (2, 4, 8)  # levels that pack whole into a byte


@dataclass(frozen=True)
class Rest:
    """k_bits / v_bits: levels of K and V (2, 4 or 8); group: channels sharing a scale (<= head_dim)."""

    k_bits: int = 4
    v_bits: int = 4
    group: int = 32

    def __post_init__(self):
        for name in ("k_bits", "v_bits"):
            b = getattr(self, name)
            if isinstance(b, bool) or b not in _BITS:
                raise ConfigError(f"rest: {name} must be one of {_BITS}, got {b!r}")
        g = self.group
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise ConfigError(f"rest: group must be a positive integer, got {g!r}")

    @property
    def label(self) -> str:
        return f"k{self.k_bits}v{self.v_bits}"

    def group_for(self, head_dim: int) -> int:
        """Channels per scale for this head size: the group, or the whole head when it is smaller."""
        g = min(self.group, head_dim)
        if head_dim % g:
            raise ConfigError(f"rest: group {self.group} does not divide head_dim {head_dim}")
        return g

    @staticmethod
    def scale_dtype(kv_itemsize: int) -> torch.dtype:
        """Scales and minimums: fp16 beside bf16/fp16 KV, fp32 beside fp32."""
        return torch.float16 if kv_itemsize <= 2 else torch.float32

    def bytes_per_token(self, head_dim: int, kv_itemsize: int) -> float:
        """Bytes per token and KV head: packed K and V levels plus a scale and minimum per group each."""
        scale = self.scale_dtype(kv_itemsize).itemsize
        groups = head_dim // self.group_for(head_dim)
        return head_dim * (self.k_bits + self.v_bits) / 8 + 2 * 2 * groups * scale


def parse_rest(text: str | None) -> Rest | None:
    """'k4v2' -> Rest(4, 2); 'none' (or None) -> None: drop what is not selected."""
    if text is None or str(text).lower() == "none":
        return None
    m = re.fullmatch(r"k(\d+)v(\d+)", str(text).lower())
    if m is None:
        raise ConfigError(f"rest must be kNvM (K and V bits: 2, 4 or 8; e.g. k4v2) or none, got {text!r}")
    return Rest(int(m.group(1)), int(m.group(2)))


def _quantize(x: torch.Tensor, bits: int, group: int, scale_dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, n, D] -> (packed levels [R, D * bits / 8, n] uint8, scale/minimum [R, D / group, 2, n]),
    tokens last. Byte row j holds channels j, j + P, j + 2P, ... (P = D * bits / 8), each in its own
    bits, so unpacking is a shift and a mask per plane of P channels."""
    r, n, d = x.shape
    xg = x.float().reshape(r, n, d // group, group)
    lo = xg.amin(-1, keepdim=True)
    top = 2**bits - 1
    scale = ((xg.amax(-1, keepdim=True) - lo) / top).to(scale_dtype)
    lo = lo.to(scale_dtype)
    s, m = scale.float(), lo.float()  # the stored, rounded values
    levels = torch.where(s > 0, (xg - m) / s.clamp(min=1e-30), 0.0).round().clamp(0, top).to(torch.uint8)
    per = 8 // bits
    planes = levels.reshape(r, n, per, d // per).permute(0, 2, 3, 1)  # [R, per, P, n]
    packed = planes[:, 0].clone()
    for i in range(1, per):
        packed |= planes[:, i] << (bits * i)
    return packed, torch.cat([scale, lo], -1).permute(0, 2, 3, 1).contiguous()  # [R, G, 2, n]


def _levels(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Packed levels [R, P, N] -> [R, D, N] fp32, channels in order."""
    per = 8 // bits
    if per == 1:
        return packed.float()
    r, p, n = packed.shape
    out = torch.empty(r, p * per, n)
    mask = 2**bits - 1
    for i in range(per):
        out[:, i * p : (i + 1) * p] = (packed >> (bits * i)) & mask if i else packed & mask
    return out


def _dequantize(packed: torch.Tensor, aux: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """The inverse of `_quantize`, tokens first: [R, n, D] fp32 (a reference; the step does not
    build it)."""
    lv = _levels(packed, bits)
    r, d, n = lv.shape
    aux = aux.float()
    x = lv.view(r, d // group, group, n) * aux[:, :, :1] + aux[:, :, 1:]
    return x.view(r, d, n).transpose(1, 2)


class RestCopies:
    """Low-precision K/V of every body token of every layer (see module doc). rows: B * Hkv."""

    def __init__(self, spec: Rest, n_layers: int, rows: int, head_dim: int, kv_dtype, device):
        self.spec, self.rows, self.head_dim, self.device = spec, rows, head_dim, device
        self.group = spec.group_for(head_dim)
        self.scale_dtype = spec.scale_dtype(kv_dtype.itemsize)
        self._k: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers
        self._v: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers
        self._n = [0] * n_layers  # body tokens held per layer

    def tokens(self, layer: int) -> int:
        return self._n[layer]

    def add(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Body tokens start .. start+n-1 of `layer`: keys, values [R, n, D]. Tokens arrive in order."""
        if start != self._n[layer]:
            raise ValueError(f"layer {layer}: rest holds {self._n[layer]} tokens, got tokens from {start}")
        n = keys.shape[1]
        for parts, x, bits in ((self._k, keys, self.spec.k_bits), (self._v, values, self.spec.v_bits)):
            packed, aux = _quantize(x, bits, self.group, self.scale_dtype)
            held = parts[layer]
            if held is None or held[0].shape[-1] < start + n:  # grow by doubling, like the sketches
                cap = max(start + n, 2 * (0 if held is None else held[0].shape[-1]))
                grown = (torch.empty(*packed.shape[:-1], cap, dtype=torch.uint8, device=self.device),
                         torch.empty(*aux.shape[:-1], cap, dtype=self.scale_dtype, device=self.device))
                if held is not None:
                    grown[0][..., :start], grown[1][..., :start] = held[0][..., :start], held[1][..., :start]
                parts[layer] = held = grown
            held[0][..., start : start + n] = packed
            held[1][..., start : start + n] = aux
        self._n[layer] = start + n

    def truncate(self, layer: int, n_tokens: int) -> None:
        self._n[layer] = min(self._n[layer], n_tokens)

    def attend(self, layer: int, q: torch.Tensor, scaling: float, read: torch.Tensor):
        """q [R, g, D]; read [R, N] bool: the body tokens each row attended exactly (N = the layer's
        body). Returns (out [R, g, D], lse [R, g]) fp32 over the others (-inf, 0 where none).
        Levels are never scaled per element: per group, q . levels and p . levels are matmuls
        and the scale and minimum enter on [R, groups, g, N] (q . k^ = s (q . l) + m sum(q))."""
        n = read.shape[1]
        if n > self._n[layer]:
            raise ValueError(f"layer {layer}: rest holds {self._n[layer]} body tokens, asked for {n}")
        spec, (pk, ak), (pv, av) = self.spec, self._k[layer], self._v[layer]
        r, g, d = q.shape
        ng, gs = d // self.group, self.group
        qg = q.float().view(r, g, ng, gs).transpose(1, 2)  # [R, ng, g, gs]
        lk = _levels(pk[..., :n], spec.k_bits).view(r, ng, gs, n)
        ak = ak[..., :n].float()  # [R, ng, 2, N]
        raw = torch.matmul(qg, lk)  # [R, ng, g, N]
        s = (raw * ak[:, :, :1] + qg.sum(-1, keepdim=True) * ak[:, :, 1:]).sum(1) * scaling  # [R, g, N]
        s = s.masked_fill(read[:, None, :], float("-inf"))
        lse = torch.logsumexp(s, dim=-1)  # [R, g]
        p = torch.exp(s - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])[:, None]  # [R, 1, g, N]
        lv = _levels(pv[..., :n], spec.v_bits).view(r, ng, gs, n)
        av = av[..., :n].float()
        out = torch.matmul(p * av[:, :, :1], lv.transpose(-1, -2)) + (p * av[:, :, 1:]).sum(-1, keepdim=True)
        return out.transpose(1, 2).reshape(r, g, d), lse  # [R, ng, g, gs] -> [R, g, D]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for parts in (self._k, self._v) for p in parts if p is not None
                   for t in p)  # fmt: skip
