"""offload-serve: an OpenAI-compatible HTTP server on loopback that processes a document once.

`ServeConfig` says where and how to serve; `Service` holds the model and its one worker;
`create_app(service)` is the ASGI app (FastAPI). The `offload-serve` command (cli/serve.py) wires
them to uvicorn."""

from .app import create_app
from .config import ServeConfig
from .service import Service

__all__ = ["ServeConfig", "Service", "create_app"]
