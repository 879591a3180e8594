"""`OffloadModel`: a loaded HF model, its tokenizer and the runtime config, plus the few facts about
them the engine needs (shapes, context, end-of-sequence ids, how to build a KV store)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from .config import OffloadConfig
from .errors import ConfigError
from .kvstore import KVStore

__all__ = ["OffloadModel"]


@dataclass(eq=False)
class OffloadModel:
    """What `offload.load_model` returns. `hf` runs with offload's attention: drive it through
    `offload.generate` / `Chat`, not `hf.generate`."""

    hf: torch.nn.Module
    tokenizer: object
    config: OffloadConfig
    model_dir: Path

    @property
    def device(self) -> torch.device:
        return self.hf.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.dtype

    @property
    def text_config(self):
        cfg = self.hf.config
        return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    @property
    def trained_ctx(self) -> int:
        return int(getattr(self.text_config, "max_position_embeddings", 0) or 0)

    @property
    def n_ctx(self) -> int:
        """Context window in tokens: the config's `ctx`, else the model's trained context."""
        return self.config.ctx or self.trained_ctx or 4096

    def kv_shape(self) -> tuple[int, int, int]:
        """(n_layers, n_kv_heads, head_dim)."""
        c = self.text_config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        return c.num_hidden_layers, n_kv, head_dim

    @cached_property
    def layer_windows(self) -> tuple[int, ...]:
        """Per layer, its sliding window (0 = global); empty when no layer slides (`layer_windows`)."""
        from .hybrid_store import layer_windows

        return layer_windows(self.text_config)

    @property
    def eos_ids(self) -> frozenset[int]:
        ids = set()
        gen = getattr(self.hf, "generation_config", None)
        for source in (getattr(gen, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        from .chat_format import stop_ids

        return frozenset(ids | stop_ids(self.tokenizer))

    def encode(self, prompt_or_messages) -> list[int]:
        """Token ids of a raw string prompt, or of a message list rendered with the chat template and
        the assistant generation prompt."""
        if isinstance(prompt_or_messages, str):  # start tokens once, also on a rendered template's text
            from .chat_format import lead_ids

            ids = self.tokenizer(prompt_or_messages, add_special_tokens=False)["input_ids"]
            return lead_ids(self.tokenizer, prompt_or_messages) + list(ids)
        if isinstance(prompt_or_messages, (list, tuple)):
            for m in prompt_or_messages:
                if not isinstance(m, dict) or "role" not in m or "content" not in m:
                    raise ConfigError("messages must be dicts with 'role' and 'content' keys")
            if not getattr(self.tokenizer, "chat_template", None):
                raise ConfigError(f"the model in {self.model_dir} has no chat template (a base model): give it "
                                  "a raw prompt string (offload-serve: /v1/completions)")  # fmt: skip
            out = self.tokenizer.apply_chat_template(
                list(prompt_or_messages), add_generation_prompt=True, tokenize=True, return_dict=True
            )
            return list(out["input_ids"])
        raise ConfigError(f"prompt must be a str or a list of messages, got {type(prompt_or_messages).__name__}")

    def fingerprint(self) -> str:
        """What a saved session must match: config, weight names/shapes/dtypes (+ a value sample),
        tokenizer."""
        from .fingerprint import model_fingerprint

        return model_fingerprint(self.hf.config, self.hf.state_dict(), self.tokenizer)

    def store_spec(self, batch: int = 1):
        """The `StoreSpec` of this model's KV under its config on its device."""
        from .store_spec import StoreSpec

        from .prefill_hidden import prefill_hidden_bytes

        n_layers, n_kv, head_dim = self.kv_shape()
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        hidden = prefill_hidden_bytes(self.device, self.n_ctx, self.text_config.hidden_size, itemsize,
                                      self.config.prefill_chunk)[1]  # fmt: skip
        return StoreSpec.derive(self.config, n_layers, n_kv, head_dim, self.dtype, self.device, batch,
                                self.planned_hot_set, windows=self.layer_windows, host_reserve=hidden)  # fmt: skip

    @cached_property
    def planned_hot_set(self) -> int | None:
        """The GPU hot set the memory plan leaves for this model at its context (`offload.plan`, the
        plan `offload-chat` prints), when the config sets none and the KV can be tiered."""
        cfg = self.config
        if cfg.hot_set_bytes is not None or (cfg.sparse is None and cfg.kv_store == "dense"):
            return None
        from .plan import plan

        memory = plan(self.hf.config, self.n_ctx, gpu_mem=cfg.gpu_mem, host_mem=cfg.host_mem,
                      disk_dir=cfg.disk_dir, offload=cfg, dtype=self.dtype, device=self.device)  # fmt: skip
        return max(1, memory.hot_set_bytes)

    def new_store(self) -> KVStore:
        """An empty KV store of the kind the config asks for (`StoreSpec`)."""
        return self.store_spec().new_store()
