"""`Service`: what the HTTP routes talk to. It is empty while the model loads (routes answer 503), then
holds the model and the worker. It turns a checked request into a `Job`: tokens, the context check
(before any compute, never truncation) and the sampling parameters."""

from __future__ import annotations

import threading

from offload.sampling import SamplingParams

from .config import ServeConfig
from .errors import APIError, bad_param, context_overflow
from .schema import GenerationRequest
from .worker import Job, Worker

__all__ = ["Service"]


class Service:
    """config: ServeConfig. `start(model, disk_cache)` once the model is loaded; `close()` at exit."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.model = None
        self.worker: Worker | None = None
        self._encode_lock = threading.Lock()  # one tokenizer, shared by request threads

    def start(self, model, disk_cache=None) -> None:
        self.model = model
        self.worker = Worker(model, self.config, disk_cache)

    @property
    def model_name(self) -> str:
        if self.config.model_name:
            return self.config.model_name
        return self.model.model_dir.name if self.model is not None else "offload"

    @property
    def ready(self) -> bool:
        return self.worker is not None

    def require_ready(self) -> None:
        if not self.ready:
            raise APIError(503, "the model is still loading; retry shortly", type="server_error",
                           code="model_loading", headers={"Retry-After": "2"})  # fmt: skip

    def status(self) -> dict:
        if not self.ready:
            return {"status": "loading"}
        return {"status": "ok", "model": self.model_name, "n_ctx": self.model.n_ctx, **self.worker.status()}

    def stats(self) -> dict:
        """What `/stats` answers: the status, which decode runs (exact, or sparse at its budget), the
        queue, and the last completed request (tokens, speed, the KV store's counters per step)."""
        self.require_ready()
        from offload.decode_choice import decode_label

        return {**self.status(), "decode": decode_label(self.model.config), "last_request": self.worker.last}

    def job(self, req: GenerationRequest, emit, label: str = "") -> Job:
        """A Job for `req` (runs on a request thread: tokenizing a 200k document takes a while).
        Raises APIError 400 for a prompt that does not fit the context with its answer."""
        self.require_ready()
        model = self.model
        param = "messages" if req.kind == "chat" else "prompt"
        if isinstance(req.prompt, tuple) and req.kind == "completion":  # token ids
            ids = list(req.prompt)
            vocab = model.hf.get_input_embeddings().num_embeddings
            if max(ids) >= vocab:
                raise bad_param("prompt", f"holds token id {max(ids)}, beyond this model's {vocab:,} tokens")
        else:
            from jinja2 import TemplateError

            try:
                with self._encode_lock:
                    ids = model.encode(req.prompt if isinstance(req.prompt, str) else list(req.prompt))
            except TemplateError as e:  # e.g. a template that wants user/assistant turns to alternate
                raise bad_param(param, f"were refused by this model's chat template: {e}") from None
        n_ctx = model.n_ctx
        max_tokens = req.max_tokens if req.max_tokens is not None else max(n_ctx - len(ids), 1)
        if len(ids) + max_tokens > n_ctx:
            raise context_overflow(len(ids), max_tokens, n_ctx, param)
        sampling = SamplingParams(req.temperature, req.top_p, req.top_k, req.seed)
        return Job(ids=ids, max_tokens=max_tokens, sampling=sampling, stop=req.stop, emit=emit, label=label)

    def cancel_all(self) -> None:
        """At a signal: stop the running generation after its current token, drop the waiting ones,
        and refuse new ones (503 shutting_down) while the connections close."""
        if self.worker is not None:
            self.worker.cancel_all(stop=True)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.shutdown()
