"""`Server`: uvicorn's server, which also cancels the generations at SIGINT/SIGTERM, so open streams
end at their next token instead of holding the shutdown until they finish."""

from __future__ import annotations

import uvicorn

__all__ = ["Server", "bound_address"]


class Server(uvicorn.Server):
    """config: a uvicorn.Config; service: the offload.serve.Service whose jobs a signal cancels."""

    def __init__(self, config: uvicorn.Config, service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig, frame):
        self.service.cancel_all()
        super().handle_exit(sig, frame)


def bound_address(server: uvicorn.Server, host: str, port: int) -> tuple[str, int]:
    """(host, port) the server listens on: the real port when asked for port 0."""
    for s in getattr(server, "servers", None) or []:
        for sock in s.sockets:
            h, p = sock.getsockname()[:2]
            return (f"[{h}]" if ":" in h else h), p
    return host, port
