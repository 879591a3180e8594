"""The HTTP face of offload-serve: an OpenAI-compatible API on FastAPI, and the chat page at `/`.

    GET  /health                503 {"status": "loading"} until the model is loaded, then 200 with
                                the queue length, counters and cached prefixes
    GET  /v1/models             the one model (and /v1/models/{id})
    POST /v1/chat/completions   messages -> answer, streamed as server-sent events or whole
    POST /v1/completions        prompt -> continuation, likewise
    GET  /                      the chat page (one static file; talks only to this server)

Every error is an OpenAI error object with its status (errors.py); an unexpected one is a 500 whose
body names no internals, its traceback going to the server log only."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .body_limit import BodyLimit
from .config import is_loopback
from .errors import APIError
from .host_check import LoopbackHostOnly
from .responses import Answer, sse
from .schema import parse_chat, parse_completion
from .service import Service

__all__ = ["create_app"]

log = logging.getLogger("offload.serve")
_PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
             "img-src 'self' data:; base-uri 'none'; form-action 'none'")  # fmt: skip


class _EventStream(StreamingResponse):
    """A stream whose job is cancelled however the response ends (client gone, server stopping)."""

    def __init__(self, content, job):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()  # a no-op once the job is done


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def create_app(service: Service) -> FastAPI:
    """The ASGI app over `service` (which may still be loading its model)."""
    config = service.config
    app = FastAPI(title="offload-serve", docs_url=None, redoc_url=None, openapi_url=None)  # docs pull CDN assets
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip
    app.add_middleware(BodyLimit, max_bytes=config.max_body)
    if is_loopback(config.host):
        app.add_middleware(LoopbackHostOnly)
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    key = config.api_key.encode() if config.api_key else None
    counter = iter(range(1, 1 << 62))

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return _error_response(e)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return _error_response(APIError(e.status_code, str(e.detail), code=code))

    @app.exception_handler(Exception)
    async def internal_error(request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error_response(APIError(500, "internal error; the server log has the details",
                                        type="server_error", code="internal_error"))  # fmt: skip

    def authorize(request: Request) -> None:
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not tell how much of a guess was right
        if not hmac.compare_digest(token.strip().encode(), key) or scheme.lower() != "bearer":
            raise APIError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                           type="authentication_error", code="invalid_api_key")  # fmt: skip

    @app.get("/health")
    async def health():
        return JSONResponse(service.status(), status_code=200 if service.ready else 503)

    @app.get("/stats")
    async def stats(request: Request):
        authorize(request)
        return service.stats()

    def model_card() -> dict:
        card = {"id": service.model_name, "object": "model", "created": 0, "owned_by": "offload"}
        return {**card, "context_length": service.model.n_ctx} if service.ready else card

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(request: Request, model_id: str):
        authorize(request)
        if model_id != service.model_name:
            raise APIError(404, f"no model '{model_id}' here; this server has '{service.model_name}'",
                           code="model_not_found", param="model")  # fmt: skip
        return model_card()

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return HTMLResponse(page, headers={"Content-Security-Policy": _PAGE_CSP})

    async def generate(request: Request, parse):
        authorize(request)
        service.require_ready()
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; absurd nesting recurses
            raise APIError(400, "the request body is not valid JSON", code="invalid_json") from None
        req = parse(body)
        label = f"#{next(counter)} {req.kind}"
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(kind, value):  # from the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))
            except RuntimeError:  # the loop is closed: the server is gone
                pass

        job = await run_in_threadpool(service.job, req, emit, label)
        if config.log_prompts:
            log.info("%s prompt: %r", label, req.prompt)
        service.worker.submit(job)
        answer = Answer(req.kind, service.model_name)
        if req.stream:
            return _EventStream(_stream(events, answer, req.include_usage, label), job)
        return await _whole(request, events, answer, job, label)

    async def _stream(events, answer: Answer, include_usage: bool, label: str):
        parts = []
        opening = answer.opening()
        if opening is not None:
            yield sse(opening)
        while True:
            kind, value = await events.get()
            if kind == "text":
                parts.append(value)
                yield sse(answer.piece(value))
            elif kind == "error":  # the status line is sent already: the error goes in the stream
                yield sse(value.body())
                break
            else:
                yield sse(answer.closing(value))
                if include_usage:
                    yield sse(answer.usage_chunk(value))
                break
        yield sse("[DONE]")
        if config.log_prompts:
            log.info("%s answer: %r", label, "".join(parts))

    async def _whole(request: Request, events, answer: Answer, job, label: str):
        async def watch():  # nobody reads a whole answer whose client is gone: stop computing it
            while not await request.is_disconnected():
                await asyncio.sleep(0.25)
            job.cancel()

        watcher, parts = asyncio.create_task(watch()), []
        try:
            while True:
                kind, value = await events.get()
                if kind == "text":
                    parts.append(value)
                elif kind == "error":
                    raise value
                else:
                    break
        finally:
            watcher.cancel()
            job.cancel()  # a no-op once done; stops the generation if this handler was cancelled
        if config.log_prompts:
            log.info("%s answer: %r", label, "".join(parts))
        return answer.whole("".join(parts), value)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, parse_chat)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, parse_completion)

    return app

