"""Request bodies of /v1/chat/completions and /v1/completions, checked field by field.

Unknown fields are ignored (clients send many: `frequency_penalty`, `user`, ...); a known field of the
wrong type or out of range is refused with a 400 naming it. What comes out is a `GenerationRequest`
the worker can run without further checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import APIError, bad_param

__all__ = ["GenerationRequest", "parse_chat", "parse_completion"]

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP = 4  # OpenAI's limit


@dataclass(frozen=True)
class GenerationRequest:
    """kind: "chat" (prompt = messages, a tuple of {"role", "content"} dicts) or "completion" (prompt =
    a string or a tuple of token ids). max_tokens None = up to the end of the context."""

    kind: str
    prompt: str | tuple
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    model: str | None = None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(body: dict, name: str, default, lo: float, hi: float, lo_open: bool = False):
    v = body.get(name)
    if v is None:
        return default
    if not (_is_int(v) or isinstance(v, float)) or not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
        low = f"greater than {lo}" if lo_open else f"at least {lo}"
        raise bad_param(name, f"must be a number {low} and at most {hi}, got {v!r}")
    return float(v)


def _int(body: dict, name: str, lo: int, hi: int | None = None):
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        raise bad_param(name, f"must be an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
                        + f", got {v!r}")  # fmt: skip
    return v


def _bool(body: dict, name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad_param(name, f"must be true or false, got {v!r}")
    return v


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or len(stops) > MAX_STOP or not all(isinstance(s, str) for s in stops):
        raise bad_param("stop", f"must be a string or a list of at most {MAX_STOP} strings")
    return tuple(s for s in stops if s)


def _common(body: dict, kind: str, prompt) -> GenerationRequest:
    n = _int(body, "n", 1)
    if n not in (None, 1):
        raise bad_param("n", "must be 1: offload-serve runs one sequence at a time")
    max_tokens = _int(body, "max_tokens", 1)
    if kind == "chat" and body.get("max_completion_tokens") is not None:
        max_tokens = _int(body, "max_completion_tokens", 1)  # the newer name wins
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_param("stream_options", "must be an object")
    include_usage = _bool(options or {}, "include_usage")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_param("model", "must be a string")
    return GenerationRequest(
        kind=kind, prompt=prompt, max_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, 0, 2),
        top_p=_number(body, "top_p", 1.0, 0, 1, lo_open=True), top_k=_int(body, "top_k", 0) or 0,
        seed=_int(body, "seed", 0), stop=_stop(body), stream=_bool(body, "stream"),
        include_usage=include_usage, model=model,
    )  # fmt: skip


def _content(i: int, content) -> str:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_param(f"messages[{i}].content", "parts must be {\"type\": \"text\", \"text\": str}; "
                                "this model reads text only")  # fmt: skip
            texts.append(part["text"])
        return "".join(texts)
    raise bad_param(f"messages[{i}].content", "must be a string or a list of text parts")


def parse_chat(body) -> GenerationRequest:
    """The body of POST /v1/chat/completions."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_param("messages", "must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise bad_param(f"messages[{i}].role", f"must be one of {sorted(_ROLES)}")
        content = m.get("content")
        if content is None and m["role"] == "assistant":
            content = ""
        out.append({"role": _ROLES[m["role"]], "content": _content(i, content)})
    return _common(body, "chat", tuple(out))


def parse_completion(body) -> GenerationRequest:
    """The body of POST /v1/completions: `prompt` is a string, a list of one string, or token ids."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(_is_int(t) and t >= 0 for t in prompt):
        prompt = tuple(prompt)
    elif not isinstance(prompt, str) or not prompt:
        raise bad_param("prompt", "must be a non-empty string, a list of one string, or a list of token ids")
    if body.get("echo"):
        raise bad_param("echo", "is not supported")
    return _common(body, "completion", prompt)
