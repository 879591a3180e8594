"""Attention kernels: Triton on CUDA, their torch references (the spec) everywhere else.

Public ops (shapes in each docstring; layouts in `reference.py`):
    sparse_decode_attention, merge_attention, chunk_scores, top_chunks, causal_prefill_attention,
    gather_chunks. (Not `prefill_attention`: that name is the submodule, which would shadow it.)
The Triton launchers (`*_triton` in sparse_decode.py, chunk_score.py, prefill_attention.py,
chunk_gather.py) and references (`reference.py`) are importable for tests and benchmarks.
"""

from .dispatch import (
    causal_prefill_attention,
    chunk_scores,
    gather_chunks,
    merge_attention,
    sparse_decode_attention,
    top_chunks,
)

__all__ = [
    "sparse_decode_attention",
    "merge_attention",
    "chunk_scores",
    "top_chunks",
    "causal_prefill_attention",
    "gather_chunks",
]
