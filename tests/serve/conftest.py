"""Real offload-serve processes for the serve tests: the console script's code started in a child
Python (port 0, the bound URL read from its "ready on" line), with an audit hook that writes every
outbound network attempt (socket.connect, a DNS lookup of a non-loopback name) to its stderr as an
`AUDIT-OUTBOUND` line, so a test can assert there were none."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

LAUNCH = r"""
import sys
def _audit(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):
        print(f"AUDIT-OUTBOUND connect {args[1]!r}", file=sys.stderr, flush=True)
    elif event == "socket.getaddrinfo" and args[0] not in (None, "localhost", "127.0.0.1", "::1", b"127.0.0.1"):
        print(f"AUDIT-OUTBOUND getaddrinfo {args[0]!r}", file=sys.stderr, flush=True)
sys.addaudithook(_audit)
sys.argv[0] = "offload-serve"
from offload.cli.serve import main
main()
"""
READY = re.compile(r"ready on (http://\S+) ")
START_LIMIT_S = 300  # a hung start fails the test instead of hanging the suite (not a speed check)


class ServerProcess:
    """A running offload-serve: `url`, `log()` (its stderr so far), `stop()` (SIGTERM, exit code)."""

    def __init__(self, args: list[str], tmp: Path, env: dict | None = None):
        self.log_path = tmp / f"serve-{time.monotonic_ns()}.log"
        child_env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "--port", "0", *args], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env)
        deadline = time.monotonic() + START_LIMIT_S
        self.url = None
        while self.url is None:
            m = READY.search(self.log())
            if m:
                self.url = m.group(1)
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"offload-serve did not start:\n{self.log()}")
            else:
                time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="package")
def server(tmp_path_factory):
    """One plain server (loopback, no key, memory cache, 1 MiB body limit) shared by the tests that
    need nothing special; each uses prompts of its own, so the shared KV cache does not couple them."""
    s = ServerProcess(["--max-body", "1M"], tmp_path_factory.mktemp("serve"))
    yield s
    s.stop()


def outbound(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("AUDIT-OUTBOUND")]


@pytest.fixture(scope="session")
def start_server():
    """start_server(args, tmp_dir, env=None) -> ServerProcess (the caller stops it)."""
    return ServerProcess


@pytest.fixture(scope="session")
def outbound_attempts():
    """outbound_attempts(log) -> the AUDIT-OUTBOUND lines of a server's log."""
    return outbound
