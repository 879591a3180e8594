"""OpenAI-style error objects: every failure a client can see is one `APIError`, answered as

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

with its HTTP status, never a traceback. Clients (the `openai` package, editors, chat apps) branch on
the status and on `code` (`context_length_exceeded`, `invalid_api_key`, ...)."""

from __future__ import annotations

__all__ = ["APIError", "bad_param", "context_overflow"]


class APIError(Exception):
    """An error answer: HTTP `status`, OpenAI `type` and `code`, the offending `param` (a field name),
    and `headers` (e.g. Retry-After on 429 and 503)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None, extra: dict | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers, self.extra = dict(headers or {}), dict(extra or {})

    def body(self) -> dict:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": {**error, **self.extra}}


def bad_param(param: str, message: str) -> APIError:
    """400 naming the field, e.g. bad_param("temperature", "must be a number between 0 and 2")."""
    return APIError(400, f"'{param}' {message}", code="invalid_value", param=param)


def context_overflow(n_prompt: int, max_tokens: int, n_ctx: int, param: str) -> APIError:
    """400 `context_length_exceeded` with both token counts, in the words OpenAI uses, raised before
    any compute: offload never truncates a document."""
    return APIError(
        400,
        f"This model's maximum context length is {n_ctx:,} tokens. However, you requested "
        f"{n_prompt + max_tokens:,} tokens ({n_prompt:,} in the {param}, {max_tokens:,} in the "
        "completion). Please reduce the length of the messages or completion, or restart offload-serve "
        "with a larger --ctx.",
        code="context_length_exceeded", param=param,
        extra={"n_prompt_tokens": n_prompt, "n_max_tokens": max_tokens, "n_ctx": n_ctx},  # llama-server's
    )
