"""`offload-serve`: an OpenAI-compatible server on 127.0.0.1 that processes each document once.

Takes offload-chat's model, context, budget and memory options (cli/options.py, same OFFLOAD_*
variables), prints the memory plan, starts listening at once (GET /health says 503 until the model is
loaded), then prints the URL. SIGINT / SIGTERM cancel the running generation after its token, close
the connections and free the KV, spill files included."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import click

from .help_groups import GroupedCommand
from .options import (checked_plan, fail, load_checked, model_options, opt, quiet_transformers, require_fit,
                      runtime_options)
from .units import BytesType

__all__ = ["main"]

HELP_EPILOG = """\b
Exit codes: 0 stopped by SIGINT/SIGTERM (or --dry-run), 1 unexpected error, 2 bad option (a --host other machines
can reach without --api-key, ...), 3 memory plan does not fit, 6 model not found.
Every option also reads an OFFLOAD_* environment variable (shown with each option).
"""


@click.command(cls=GroupedCommand, epilog=HELP_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@model_options
@runtime_options
@opt("--host", env="HOST", default="127.0.0.1", show_default=True, help="Address to listen on. Anything but loopback needs --api-key.")
@opt("--port", env="PORT", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0 = any free port (printed).")
@opt("--api-key", env="API_KEY", default=None, help="Require 'Authorization: Bearer KEY' on /v1 (compared in constant time).")
@opt("--alias", env="ALIAS", default=None, help="Model id shown by /v1/models (default: the model directory's name).")
@opt("--cache-dir", env="SERVE_CACHE_DIR", type=click.Path(file_okay=False), default=None, help="Keep processed prefixes here as sessions (0700/0600), so a restart does not prefill them again. Default: memory only.")
@opt("--cache-size", env="CACHE_SIZE", type=BytesType(), default="20G", show_default=True, help="Most bytes --cache-dir may hold; least recently used sessions go first.")
@opt("--kv-slots", env="KV_SLOTS", type=click.IntRange(min=1), default=2, show_default=True, help="Conversations whose KV stays in memory (least recently used dropped; together at most --ctx tokens).")
@opt("--queue-size", env="QUEUE_SIZE", type=click.IntRange(min=0), default=8, show_default=True, help="Requests that may wait behind the running one; more get 429 with Retry-After.")
@opt("--max-body", env="MAX_BODY", type=BytesType(), default="32M", show_default=True, help="Largest request body; larger get 413.")
@opt("--cors-origin", "cors_origins", env="CORS_ORIGIN", multiple=True, help="Allow this browser origin (repeatable). Default: no CORS.")
@opt("--log-prompts", env="LOG_PROMPTS", is_flag=True, help="Log request and answer text (never logged otherwise).")
@opt("--dry-run", env="DRY_RUN", is_flag=True, help="Print the memory plan and exit (3 when it does not fit).")
@opt("-v", "--verbose", env="VERBOSE", is_flag=True, help="Tracebacks, loading details and the access log.")
def main(**o):
    """Serve a local model over an OpenAI-compatible API on this machine. Nothing leaves it."""
    try:
        _run(o)
    except Exception as e:  # every failure becomes one line and an exit code
        fail(e, o["verbose"])


def _serve_config(o: dict):
    from offload.serve import ServeConfig

    return ServeConfig(host=o["host"], port=o["port"], api_key=o["api_key"], cache_dir=o["cache_dir"],
                       cache_size=o["cache_size"], memory_slots=o["kv_slots"], queue_size=o["queue_size"],
                       max_body=o["max_body"], cors_origins=tuple(o["cors_origins"]), log_prompts=o["log_prompts"],
                       model_name=o["alias"])  # fmt: skip


def _run(o: dict) -> None:
    serve_config = _serve_config(o)  # a bad --host / --api-key fails before anything loads
    logging.basicConfig(level=logging.INFO, format="offload-serve: %(message)s", stream=sys.stderr)
    quiet_transformers(o["verbose"])
    config, memory = checked_plan(o)
    click.echo(str(memory), err=True)
    require_fit(memory)
    if o["dry_run"]:
        return

    import uvicorn

    from offload.serve import Service, create_app
    from offload.serve.server import Server

    service = Service(serve_config)
    server = Server(uvicorn.Config(create_app(service), host=serve_config.host, port=serve_config.port,
                                    log_level="info" if o["verbose"] else "warning", access_log=o["verbose"],
                                    lifespan="off"), service)  # fmt: skip
    failure: list[BaseException] = []
    loader = threading.Thread(target=_load, args=(o, config, memory, service, server, failure), daemon=True)
    loader.start()
    click.echo("offload-serve: loading the model; GET /health answers 503 until it is ready", err=True)
    # uvicorn re-raises the signal that stopped it once it restores the handlers it found; these make
    # that a no-op, so the KV is freed below and the exit code is 0 rather than death by signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        server.run()
    finally:
        service.close()  # joins the worker, frees every store (spill files removed)
    if failure:
        raise failure[0]
    if not server.started:
        sys.exit(1)  # uvicorn said why (e.g. the port is taken)


def _load(o, config, memory, service, server, failure) -> None:
    """On its own thread: load the model, open the disk cache, start serving; on failure stop the
    server so main exits with the error's code."""
    from offload.decode_choice import decode_label
    from offload.serve.server import bound_address

    try:
        model = load_checked(o, config, memory)
        disk = None
        if o["cache_dir"]:
            from offload.serve.disk_cache import DiskCache

            log = logging.getLogger("offload.serve").info
            disk = DiskCache(o["cache_dir"], model.fingerprint(), o["cache_size"], model.config, model.device,
                             model.dtype, log=log, planned_hot_set=model.planned_hot_set)  # fmt: skip
        service.start(model, disk)

        while not server.started and not server.should_exit:
            threading.Event().wait(0.05)
        host, port = bound_address(server, o["host"], o["port"])
        cached = f"; {len(disk)} cached prefixes in {o['cache_dir']}" if disk is not None else ""
        click.echo(f"offload-serve: ready on http://{host}:{port} (model {service.model_name}, context "
                   f"{model.n_ctx:,} tokens, {decode_label(model.config)} decode{cached}); Ctrl-C stops",
                   err=True)  # fmt: skip
    except BaseException as e:
        failure.append(e)
        server.should_exit = True


if __name__ == "__main__":
    main()
