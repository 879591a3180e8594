"""Refuse requests whose Host header is not this machine, when serving on loopback: the defence
against DNS rebinding, where a web page the user opens points its own name at 127.0.0.1 and then
reads this server's answers as if they were its own (the browser sees one origin, so CORS does not
apply). A non-loopback server is guarded by its API key instead."""

from __future__ import annotations

import json

from .config import is_loopback
from .errors import APIError

__all__ = ["LoopbackHostOnly"]


def _host_name(value: bytes) -> str:
    """`name` of a Host header `name[:port]` (IPv6 literals keep their brackets)."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[: text.find("]") + 1]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class LoopbackHostOnly:
    """app: the ASGI app to guard. Accepted: localhost, 127.0.0.0/8 and [::1], with any port."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope.get("headers") or []).get(b"host", b"")
            if not is_loopback(_host_name(host)):
                err = APIError(400, "this server answers requests addressed to localhost / 127.0.0.1 only "
                               "(start it with --host and --api-key to serve other names)",
                               code="invalid_host")  # fmt: skip
                body = json.dumps(err.body()).encode()
                await send({"type": "http.response.start", "status": err.status,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
