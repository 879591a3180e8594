"""An ASGI middleware that refuses request bodies over a limit with 413, by Content-Length before
reading anything, and by counting what arrives for chunked bodies that declare no length."""

from __future__ import annotations

import json

from .errors import APIError

__all__ = ["BodyLimit"]


class BodyLimit:
    """app: the ASGI app to guard; max_bytes: the largest body accepted."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _error(self) -> APIError:
        return APIError(413, f"the request body is larger than {self.max_bytes:,} bytes (offload-serve "
                         "--max-body)", code="request_too_large")  # fmt: skip

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            err = self._error()
            body = json.dumps(err.body()).encode()
            await send({"type": "http.response.start", "status": err.status,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"connection", b"close")]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._error()  # raised inside the route's body read: answered as an APIError
            return message

        await self.app(scope, counted, send)
