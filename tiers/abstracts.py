"""`ChunkAbstracts`: a few numbers per body chunk and KV head, resident on the compute device, that
bound the chunk's attention scores (invariant 5) so decode finds the chunks that matter.

Kinds (one per store, chosen by the selection policy):
- "lowrank" (policy `bound`, ours): per (layer, KV head) an orthonormal basis P [D, r] — the top-r
  eigenvectors of the post-RoPE keys' second moment K^T K (uncentred: the mean direction dominates,
  DESIGN §5) from the first keys the layer stores (the prompt). Per chunk: min and max of P^T k per
  basis direction and the max norm of the residual k - P P^T k. Score (kernels.chunk_scores)
      sum_i max(q~_i lo_i, q~_i hi_i) + ||q - P q~|| max||k_res||  >=  max_k q.k
  for *any* orthonormal P: a good P only makes it tight. Unlike a mean landmark (ShadowKV), an
  outlier key that holds a needle widens its chunk's box and raises the bound instead of vanishing.
- "token" (policy `token`): the same basis P, but per *token* instead of per chunk: P^T k in int8
  with one scale per token (absmax / 127, rounded up) and the residual norm, rounded up; with the
  rounding error of each coordinate at most half a scale step,
      score = max over the chunk's tokens of  q~ . k^ + ||q_res|| res + ||q~||_1 (scale / 2)  >=  max_k q.k
  A box mixes the extremes of different keys, so a chunk whose one key matters (an induction/copy
  head's target) ranks behind chunks whose boxes are merely wide; a per-token bound does not. On the
  demo document, layer 18's copy head puts 0.85 of its attention on one key: box bounds rank its
  chunk 55th-350th (rank 8..48 alike), the per-token bound (r 16) 5th. Costs r + 4 bytes per token
  (bf16 KV; r + 8 beside fp32 KV). int8 buys twice the rank of fp16 in the same bytes: SmolLM2 4k,
  1/16, token selection recall 0.947 at r 28 int8 vs 0.933 at r 14 fp16 (sparse-smollm2.md, session 9).
  The same sketches also estimate each chunk's attention mass (`token_scores`: softmax of q~ . k^):
  a bound ranks a chunk by its one best key, which in diffuse layers is not where the mass is.
- "quest": per-channel min/max of the keys (Quest): also an upper bound, 2D numbers per chunk.
- "mean": the chunk's mean key (ShadowKV landmark): an estimate, not a bound; baseline only.

Buffers are preallocated per store: [L, B, Hkv, capacity, width] fp32, capacity from `ctx` when
known, else doubled when full (amortised: the decode loop does not allocate per step).

Size (fp32 abstracts, per KV head, C = 16 tokens per chunk: the default with a budget, but for
`token`'s 8, which its per-token sketches do not feel):
- lowrank: (2r + 1) * 4 / C bytes per token. SmolLM2 (D 64, r 16): 8.25 B/token vs 256 B of bf16
  K+V = 1/31 (1/62 of fp32 K+V), plus the basis D*r*4 = 4 KiB per head and layer. Llama-3.1-8B
  (D 128, r 32): 16.25 B vs 512 B = 1/31; at 200k tokens 32 layers x 8 heads x 12.5k chunks x 260 B
  = 832 MB next to 24.4 GiB of KV.
- quest: 2D * 4 / C = 32 B/token for D 64: 1/8 of bf16 K+V, the issue's ceiling (1/16 of fp32).
- token: r + 4 B/token (int8 P^T k, fp16 scale and residual; stored tokens last), whatever C:
  r 28 for D 64 (32 B = 1/8), r 60 for D 128 (64 B = 1/8); scoring reads every token's sketch, not one box per chunk (tokens/C
  times more). Beside fp32 KV (CPU) scale and residual sit in fp32: r + 8 B, 36 B = 1/14 of fp32 K+V.
"""

from __future__ import annotations

import torch

from offload.kernels.dispatch import chunk_scores

__all__ = ["ChunkAbstracts", "KINDS"]

KINDS = ("lowrank", "token", "quest", "mean")
_BASIS_KINDS = ("lowrank", "token")  # kinds that project on a per-(layer, KV head) basis
_FP16_UP = 1 + 2**-10  # x * _FP16_UP rounded to fp16 is >= x (round-to-nearest errs by <= 2^-11)
_RES_SLACK = 1e-5  # relative slack on the residual norm: fp32 rounding must not break the bound
_Q8 = 127  # token sketches: int8 levels each side of 0
_HALF_STEP = 0.5 + 2**-12  # |P^T k - scale * int8| / scale: half a step, plus fp32 division error
_MIN_SCALE = 2**-14  # smallest normal fp16: a zero projection still gets a usable scale
DEFAULT_RANK = 16  # "lowrank" when no rank is given ("token": the most that fits 1/8 of the KV)


class ChunkAbstracts:
    """Abstracts of every body chunk of every layer (see module doc).

    rows are B*Hkv (the store's layout); `add` takes a chunk's keys [R, C, D] on the device."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, kind: str,
                 rank: int | None, device, capacity: int = 64, chunk: int = 16,
                 kv_dtype: torch.dtype = torch.bfloat16):  # fmt: skip
        if kind not in KINDS:
            raise ValueError(f"abstract kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.n_layers, self.batch, self.n_kv = kind, n_layers, batch, n_kv_heads
        self.head_dim, self.device = head_dim, torch.device(device)
        cap = head_dim // 2 - 4  # token: r int8 + 2 halves per token <= 1/8 of bf16 K+V (4D bytes)
        if rank is None:
            rank = cap if kind == "token" else DEFAULT_RANK
        self.rank = min(rank, head_dim)
        if kind == "token":
            self.rank = max(1, min(rank, cap))
        self.chunk = chunk
        # token sketches' scale and residual: fp16 beside 16-bit KV, fp32 beside fp32 KV (CPU: read
        # without a conversion, and still 1/14 of that KV)
        self.sketch_dtype = torch.float16 if kv_dtype.itemsize <= 2 else torch.float32
        self.width = self.rank if kind in _BASIS_KINDS else head_dim
        self.n = [0] * n_layers
        self._alloc(max(1, capacity))
        if kind in _BASIS_KINDS:  # basis [L, Hkv, D, r]; `has_basis` says which layers have one
            self.basis = torch.zeros(n_layers, n_kv_heads, head_dim, self.rank, device=self.device)
            self.has_basis = [False] * n_layers

    def _alloc(self, capacity: int) -> None:
        """(Re)allocate the buffers for `capacity` chunks per layer, keeping what they hold."""
        shape = (self.n_layers, self.batch, self.n_kv, capacity, self.width)
        old = (getattr(self, "lo", None), getattr(self, "hi", None), getattr(self, "res", None))
        if self.kind == "token":  # per token, tokens last (scoring is one [G, r] x [r, N] matmul):
            # lo [L, B, Hkv, r, cap*C] int8 P^T k / scale; hi [L, B, Hkv, 2, cap*C] (scale, res)
            tokens = capacity * self.chunk
            self.lo = torch.zeros((*shape[:3], self.width, tokens), dtype=torch.int8, device=self.device)
            self.hi = torch.zeros((*shape[:3], 2, tokens), dtype=self.sketch_dtype, device=self.device)
            self.res = None
        else:
            self.lo = torch.zeros(shape, device=self.device)  # lowrank/quest: min; mean: the mean key
            self.hi = torch.zeros(shape, device=self.device) if self.kind != "mean" else None
            self.res = torch.zeros(shape[:-1], device=self.device) if self.kind == "lowrank" else None
        for new, prev in zip((self.lo, self.hi, self.res), old):
            if new is not None and prev is not None:
                if self.kind == "token":
                    new[..., : prev.shape[-1]] = prev
                else:
                    new[:, :, :, : prev.shape[3]] = prev
        self.capacity = capacity

    def _grow(self, need: int) -> None:
        self._alloc(max(need, 2 * self.capacity))

    @property
    def nbytes(self) -> int:
        total = sum(t.numel() * t.element_size() for t in (self.lo, self.hi, self.res) if t is not None)
        return total + (self.basis.numel() * 4 if self.kind in _BASIS_KINDS else 0)

    def ensure_basis(self, layer: int, keys: torch.Tensor) -> None:
        """Fix layer's basis from keys [R, N, D] (its first stored keys) unless it has one."""
        if self.kind not in _BASIS_KINDS or self.has_basis[layer]:
            return
        kf = keys.float().reshape(self.batch, self.n_kv, -1, self.head_dim)
        second = torch.einsum("bhnd,bhne->hde", kf, kf)  # [Hkv, D, D], summed over the batch
        _, vecs = torch.linalg.eigh(second)  # ascending eigenvalues; orthonormal columns
        self.basis[layer] = vecs[..., -self.rank :]
        self.has_basis[layer] = True

    def add(self, layer: int, j: int, keys: torch.Tensor) -> None:
        """Abstracts of chunks j, j+1, .. j+n-1 (the layer's next ones) from their keys [R, n*C, D]:
        prefill hands a layer's chunks in one call — one pass of a few ops, not one per chunk."""
        if j != self.n[layer]:
            raise ValueError(f"layer {layer}: abstract for chunk {j}, expected chunk {self.n[layer]}")
        c = self.chunk
        if keys.shape[1] % c or not keys.shape[1]:
            raise ValueError(f"abstracts take whole chunks of {c} tokens, got {keys.shape[1]} tokens")
        n = keys.shape[1] // c
        if j + n > self.capacity:
            self._grow(j + n)
        kf = keys.float().reshape(self.batch, self.n_kv, n, c, self.head_dim)  # [B, Hkv, n, C, D]
        self.ensure_basis(layer, keys)  # no-op unless a basis kind's layer has none yet
        dst = slice(j, j + n)
        if self.kind in _BASIS_KINDS:
            p = self.basis[layer][:, None]  # [Hkv, 1, D, r]
            proj = torch.matmul(kf, p)  # [B, Hkv, n, C, r]
            resid = (kf - torch.matmul(proj, p.transpose(-1, -2))).norm(dim=-1)  # [B, Hkv, n, C]
            resid = resid * (1 + _RES_SLACK) + _RES_SLACK * kf.norm(dim=-1)
        if self.kind == "token":  # scale >= absmax / 127 once stored (rounded up): |P^T k / scale| <= 127
            up = _FP16_UP if self.sketch_dtype == torch.float16 else 1.0
            amax = proj.abs().amax(-1, keepdim=True)  # [B, Hkv, n, C, 1]
            scale = (amax * (up / _Q8)).clamp(min=_MIN_SCALE).to(self.sketch_dtype)
            levels = (proj / scale.float()).round().clamp(-_Q8, _Q8)  # error <= _HALF_STEP * scale
            cols = slice(j * c, (j + n) * c)
            b, h = self.batch, self.n_kv
            self.lo[layer, :, :, :, cols] = levels.to(torch.int8).reshape(b, h, n * c, -1).transpose(-1, -2)
            aux = torch.cat([scale, (resid * up)[..., None].to(self.sketch_dtype)], -1)  # [B, Hkv, n, C, 2]
            self.hi[layer, :, :, :, cols] = aux.reshape(b, h, n * c, 2).transpose(-1, -2)
        elif self.kind == "lowrank":
            self.lo[layer, :, :, dst] = proj.amin(3)
            self.hi[layer, :, :, dst] = proj.amax(3)
            self.res[layer, :, :, dst] = resid.amax(-1)
        elif self.kind == "quest":
            self.lo[layer, :, :, dst] = kf.amin(3)
            self.hi[layer, :, :, dst] = kf.amax(3)
        else:
            self.lo[layer, :, :, dst] = kf.mean(3)
        self.n[layer] = j + n

    def scores(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """Score of each of the layer's chunks for q [B, H, D]: [B, Hkv, m] fp32 (max over the
        KV head's query group). lowrank/quest: an upper bound of the chunk's best q.k."""
        m = self.n[layer]
        if self.kind == "token":
            return self.token_scores(layer, q, None)[0]
        lo = self.lo[layer, :, :, :m]
        if self.kind == "lowrank":
            return chunk_scores(q, lo, self.hi[layer, :, :, :m], basis=self.basis[layer],
                                res_max=self.res[layer, :, :, :m])  # fmt: skip
        if self.kind == "quest":
            return chunk_scores(q, lo, self.hi[layer, :, :, :m])
        b, h, d = q.shape
        qg = q.float().reshape(b, self.n_kv, h // self.n_kv, d)
        return torch.matmul(qg, lo.transpose(-1, -2)).amax(2)

    def token_scores(self, layer: int, q: torch.Tensor, scaling: float | None, per_token: bool = False):
        """kind "token", q [B, H, D]: (bound, mass), each [B, Hkv, m] fp32 (per_token: [B, Hkv, m*C],
        each token's own, for selections of single tokens). bound: the per-token
        upper bound, max over the chunk's tokens and the group (invariant 5). mass (None when
        scaling is None): the attention mass each chunk would get if every key were its sketch
        k^ = P scale int8 — softmax over the layer's body of scaling * q~ . k^, per query head, summed
        over the chunk and the group: an estimate, not a bound, that sees mass spread over many
        keys (diffuse layers), which a max over single keys does not. Torch on every device (one
        matmul over the layer's tokens; no Triton twin yet)."""
        m, c = self.n[layer], self.chunk
        b, h, d = q.shape
        g = h // self.n_kv
        qg = q.float().reshape(b, self.n_kv, g, d)  # [B, Hkv, G, D]
        p = self.basis[layer]  # [Hkv, D, r]
        q_low = torch.matmul(qg, p)  # [B, Hkv, G, r]
        q_res = (qg - torch.matmul(q_low, p.transpose(-1, -2))).norm(dim=-1, keepdim=True)  # [B, Hkv, G, 1]
        n = m * c
        levels = self.lo[layer, :, :, :, :n].float()  # [B, Hkv, r, N]
        aux = self.hi[layer, :, :, :, :n].float()  # [B, Hkv, 2, N]: (scale, res); a view when fp32
        scale, res = aux[:, :, :1], aux[:, :, 1:]  # [B, Hkv, 1, N] each
        est = torch.matmul(q_low, levels) * scale  # q~ . k^ [B, Hkv, G, N]
        # what the sketch may miss: rounding (half a step per coordinate) and the residual
        half_steps = _HALF_STEP * q_low.abs().sum(-1, keepdim=True)  # [B, Hkv, G, 1]
        # reductions over contiguous dims (group first, then the chunk's C tokens): a strided
        # amax over (G, C) at once costs several times more on CPU
        bound = torch.addcmul(torch.addcmul(est, half_steps, scale), q_res, res).amax(2)  # [B, Hkv, N]
        if not per_token:
            bound = bound.view(b, self.n_kv, m, c).amax(-1)
        if scaling is None:
            return bound, None
        mass = torch.softmax(est * scaling, dim=-1).sum(2)  # [B, Hkv, N]: per head, summed over the group
        return bound, mass if per_token else mass.view(b, self.n_kv, m, c).sum(-1)

    def truncate(self, layer: int, m: int) -> None:
        """Forget abstracts of chunks >= m (the basis stays)."""
        self.n[layer] = min(self.n[layer], m)
