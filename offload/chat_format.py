"""A chat format for a tokenizer that ships none.

Base models (the embedded Gemma-3-270M) come without a chat template, but Gemma's vocabulary has
its turn markers: `<start_of_turn>user` / `<start_of_turn>model` lines closed by `<end_of_turn>`,
a system prompt prefixed to the first user turn, `<bos>` once at the start — the format Gemma 3's
instruction-tuned models use. A tokenizer that has those tokens and no template gets that format, so
offload-chat, the chat API and sessions work the same on it (a base model answers as well as it
completes); the answer ends at `<end_of_turn>` (`stop_ids`). A tokenizer with neither a template
nor turn tokens keeps none: a chat on it is a `ConfigError` naming the completion API.
"""

from __future__ import annotations

__all__ = ["GEMMA_TURNS", "ensure_chat_format", "stop_ids", "has_own_chat_template", "lead_ids"]

# Jinja, rendered by transformers' apply_chat_template.
GEMMA_TURNS = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] | trim -%}"
    "{%- else -%}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' }}"
    "{%- if ns.system and m['role'] == 'user' -%}{{ ns.system + '\n\n' }}{%- set ns.system = '' -%}{%- endif -%}"
    "{{ m['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
_TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")


def _special_id(tokenizer, token: str) -> int | None:
    tid = tokenizer.convert_tokens_to_ids(token)
    return tid if isinstance(tid, int) and tid != tokenizer.unk_token_id else None


def ensure_chat_format(tokenizer) -> None:
    """Give `tokenizer` Gemma's turn format when it has no chat template and has the turn tokens."""
    if getattr(tokenizer, "chat_template", None):
        return
    if all(_special_id(tokenizer, t) is not None for t in _TURN_TOKENS):
        tokenizer.chat_template = GEMMA_TURNS


def stop_ids(tokenizer) -> set[int]:
    """Ids that end an answer because the chat template closes turns with them (`<end_of_turn>`)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    tid = _special_id(tokenizer, "<end_of_turn>") if "<end_of_turn>" in template else None
    return set() if tid is None else {tid}


def has_own_chat_template(tokenizer) -> bool:
    """Whether the model shipped a chat template (an instruct model), not the turn format given here
    to a base model: the eval writes completion-form prompts for the others."""
    template = getattr(tokenizer, "chat_template", None)
    return bool(template) and template != GEMMA_TURNS


def lead_ids(tokenizer, text: str = "") -> list[int]:
    """The ids the tokenizer puts before `text` when it adds special tokens (Gemma: <bos>; SmolLM2:
    none), none when `text` already starts with them (a rendered chat template)."""
    lead = list(tokenizer("", add_special_tokens=True)["input_ids"])
    if lead and text and text.startswith(tokenizer.decode(lead)):
        return []
    return lead
