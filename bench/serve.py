"""offload-serve over a document: time to first token of the first question (the document is
processed), of a follow-up (its KV reused from memory) and of a question after a server restart (its
KV read from --cache-dir); and decode tokens/s through the server vs the Python API, same run.

    python bench/serve.py --doc examples/lighthouse.md --json bench/results/serve-cpu.jsonl

TTFT is what a client sees: from sending the streaming request to the first content chunk. The
server is the real `offload-serve` command in a child process; the client is httpx. Decode speed:
(tokens - 1) / (last chunk - first chunk) through the server, against `offload.stream_generate` on
the same prompt in this process, interleaved (the server idle meanwhile), best of --repeats each.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine  # bench/ is first on sys.path when run as `python bench/serve.py`

SPEED_PROMPT = "Count from one to two hundred: 1, 2, 3, 4, 5,"


class Server:
    """`offload-serve --port 0 ARGS` in a child process; `url` once it says it is ready."""

    def __init__(self, args: list[str], log: Path):
        exe = Path(sys.executable).parent / "offload-serve"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "offload.cli.serve"]
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen(cmd + ["--port", "0", *args], stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)  # fmt: skip
        while not (m := re.search(r"ready on (http://\S+) ", log.read_text())):
            if self.proc.poll() is not None:
                raise SystemExit(f"offload-serve exited:\n{log.read_text()}")
            time.sleep(0.1)
        self.url = m.group(1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()


def stream(url: str, path: str, body: dict) -> dict:
    """One streaming request: seconds to the first content chunk, to the last, the text and usage."""
    import httpx

    t0 = time.perf_counter()
    first = last = None
    text, usage = [], None
    body = {**body, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0}
    with httpx.stream("POST", url + path, json=body, timeout=3600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk.get("choices", []):
                piece = c.get("text") or (c.get("delta") or {}).get("content")
                if piece:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    text.append(piece)
    return {"ttft": first - t0, "span": last - first, "text": "".join(text), "usage": usage}


def api_speed(model, n: int) -> tuple[float, int]:
    """Decode tok/s of offload.stream_generate on SPEED_PROMPT: (tok/s, tokens)."""
    import offload

    t_first, t_last, count = None, None, 0
    for r in offload.stream_generate(model, SPEED_PROMPT, max_new_tokens=n):
        if r.token is not None:
            count = r.generation_tokens
            t_last = time.perf_counter()
            t_first = t_first or t_last
    return (count - 1) / (t_last - t_first), count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doc", default="examples/lighthouse.md")
    ap.add_argument("--new", type=int, default=16, help="answer tokens for the TTFT questions")
    ap.add_argument("--speed-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import torch

    import offload

    doc = Path(a.doc).read_text(encoding="utf-8")
    system = {"role": "system", "content": "Answer questions using this document.\n\n" + doc}
    chat = "/v1/chat/completions"
    with tempfile.TemporaryDirectory() as tmp:
        args = ["--cache-dir", os.path.join(tmp, "cache")]
        server = Server(args, Path(tmp) / "serve1.log")
        q1 = [system, {"role": "user", "content": "How old is the lighthouse?"}]
        first = stream(server.url, chat, {"messages": q1, "max_tokens": a.new})
        q2 = q1 + [{"role": "assistant", "content": first["text"]},
                   {"role": "user", "content": "Who was its last keeper?"}]  # fmt: skip
        follow = stream(server.url, chat, {"messages": q2, "max_tokens": a.new})
        import httpx

        while httpx.get(server.url + "/health").json()["disk_sessions"] < 1:  # the save after the answer
            time.sleep(0.1)
        model = offload.load_model()
        speeds = {"api": [], "server": []}
        for _ in range(a.repeats):  # interleaved: the machine's load hits both alike
            speeds["api"].append(api_speed(model, a.speed_tokens)[0])
            s = stream(server.url, "/v1/completions", {"prompt": SPEED_PROMPT, "max_tokens": a.speed_tokens})
            speeds["server"].append((s["usage"]["completion_tokens"] - 1) / s["span"])
        server.stop()
        server = Server(args, Path(tmp) / "serve2.log")
        q3 = [system, {"role": "user", "content": "What does the lamp burn?"}]
        restart = stream(server.url, chat, {"messages": q3, "max_tokens": a.new})
        server.stop()
    api, srv = max(speeds["api"]), max(speeds["server"])
    row = {"bench": "serve", "doc": a.doc, "prompt_tokens": first["usage"]["prompt_tokens"],
           "ttft_first_s": round(first["ttft"], 3), "ttft_follow_s": round(follow["ttft"], 3),
           "ttft_restart_s": round(restart["ttft"], 3), "follow_x": round(first["ttft"] / follow["ttft"], 1),
           "restart_x": round(first["ttft"] / restart["ttft"], 1),
           "cached_follow": follow["usage"]["prompt_tokens_details"]["cached_tokens"],
           "cached_restart": restart["usage"]["prompt_tokens_details"]["cached_tokens"],
           "api_tok_s": round(api, 2), "server_tok_s": round(srv, 2), "server_vs_api": round(srv / api, 3),
           "machine": machine(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    print(f"{'':>22} | {'prompt tok':>10} | {'cached':>6} | {'TTFT s':>7} | {'vs first':>8}")
    for name, r in (("first question", first), ("follow-up", follow), ("after restart", restart)):
        u = r["usage"]
        print(f"{name:>22} | {u['prompt_tokens']:>10,} | {u['prompt_tokens_details']['cached_tokens']:>6,} | "
              f"{r['ttft']:>7.2f} | {first['ttft'] / r['ttft']:>7.1f}x")
    print(f"decode tok/s: Python API {api:.2f}, server {srv:.2f} ({srv / api:.3f}x); "
          f"runs api {[round(x, 2) for x in speeds['api']]}, server {[round(x, 2) for x in speeds['server']]}")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
