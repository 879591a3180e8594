"""The spill files of a 1M-token tiered KV store, at that size (issue #25): their size, modes and
checksums, their removal on close and after a crash, and a full disk as a clear error that leaves no
partial state.

    nice -n 19 python bench/spill_scale.py --json bench/results/scale/spill-1m.json   # 1M tokens
    python bench/spill_scale.py --tokens 65536                                          # a quick check

One layer of Llama-3.1-8B's KV (8 KV heads x 128, bf16, 64-token chunks of 256 KiB) is appended in
`--piece`-token pieces generated on the fly from a seed per piece (never the whole body at once); the
host pool holds `--host-frac` of the body, the rest spills; the GPU hot set is one chunk, so every
read of a disk chunk reads the file. One row per check, its detail saying what was seen: fill (bytes,
records, time, peak RSS); modes (files 0600, directories 0700); checksums (>= 200 records spread over
the file, first and last included, read back through the store equal to the regenerated tokens; a
flipped byte in the first and in the last record is a CorruptChunkError; restored, it reads back);
close (files and directories gone); crash (a child fills the store and is killed -9; a new SpillDir
reaps what it left); disk full (a child on a --full-gib tmpfs, ENOSPC, needs root; and one under
RLIMIT_FSIZE, EFBIG: DiskFullError with its advice, the store as before the failed append, its last
record readable, nothing left after close).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from _common import emit, machine

from offload.config import OffloadConfig
from offload.errors import DiskFullError
from offload.store_spec import StoreSpec
from offload.tiers.codec import CorruptChunkError
from offload.tiers.spill import SpillDir

HKV, D, CHUNK = 8, 128, 64  # Llama-3.1-8B: 8 KV heads x 128; the dense store's chunk
GIB = 1 << 30


def _piece(p: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Piece p's k, v [1, HKV, size, D] bf16: KV-like (per-channel scale and offset, as real keys have)."""
    g = torch.Generator().manual_seed(seed)
    scale, offset = 0.5 + 3 * torch.rand(D, generator=g), 2 * torch.randn(D, generator=g)
    g.manual_seed(seed * 1_000_003 + p + 1)
    k, v = (torch.randn(1, HKV, size, D, generator=g) * scale + offset for _ in range(2))
    return k.to(torch.bfloat16), v.to(torch.bfloat16)


def _spec(args, disk_dir: str) -> StoreSpec:
    lay_bytes = 2 * HKV * CHUNK * D * 2  # one chunk, bf16
    host = max(lay_bytes, int(args.tokens / CHUNK * args.host_frac) * lay_bytes)
    cfg = OffloadConfig(kv_store="tiered", device="cpu", dtype="bfloat16", ctx=args.tokens, kv_chunk=CHUNK,
                        host_mem=host, hot_set_bytes=lay_bytes, disk_dir=disk_dir)  # fmt: skip
    return StoreSpec.derive(cfg, 1, HKV, D, torch.bfloat16, "cpu")


def _fill(store, args, catch: bool = False) -> tuple[float, tuple | None]:
    """Append tokens [0, args.tokens) piece by piece. Returns (seconds, None); with `catch`, a
    DiskFullError ends the fill and comes back as (piece, error, the store's stats before that append)."""
    t0 = time.perf_counter()
    for p in range(-(-args.tokens // args.piece)):
        k, v = _piece(p, args.seed, args.piece)
        n, before = min(args.piece, args.tokens - p * args.piece), store.stats()
        try:
            store.append(0, k[:, :, :n], v[:, :, :n])
        except DiskFullError as e:
            if not catch:
                raise
            return time.perf_counter() - t0, (p, e, before)
    return time.perf_counter() - t0, None


class _Tokens:
    """Regenerates any span of positions from the pieces (the last two kept: samples come in order)."""

    def __init__(self, args):
        self.args, self.cache = args, {}

    def span(self, lo: int, hi: int) -> torch.Tensor:  # [2, HKV, hi - lo, D]
        P = self.args.piece
        parts = []
        for p in range(lo // P, (hi - 1) // P + 1):
            if p not in self.cache:
                self.cache = {q: kv for q, kv in self.cache.items() if q == p - 1}
                self.cache[p] = torch.cat(_piece(p, self.args.seed, P))  # [2, HKV, P, D]
            a, b = max(lo, p * P) - p * P, min(hi, (p + 1) * P) - p * P
            parts.append(self.cache[p][:, :, a:b])
        return torch.cat(parts, 2)


def _read_equal(store, tokens: _Tokens, j: int) -> tuple[bool, bool]:
    """(was on disk only, equal): chunk j read through the store (pin: a disk read checks the CRC)."""
    cold = not store.is_resident(0, j)
    got = store.pool.kv[store.pin(0, [j])[0]]  # [2, R, C, D]
    p0 = store.layout.chunk_start(j)
    want = tokens.span(p0, p0 + store.layout.chunk)
    store.done(0, pinned=True)
    return cold, torch.equal(got.view(torch.int16), want.view(torch.int16))


def _poke(path: str, at: int, new: bytes | None = None) -> bytes:
    """Write byte `at` of `path` (new, else the old one with bits flipped); returns the old byte."""
    with open(path, "r+b", buffering=0) as f:
        old = os.pread(f.fileno(), 1, at)
        os.pwrite(f.fileno(), new if new is not None else bytes([old[0] ^ 0x5A]), at)
    return old


def _tree_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0


def _corrupt(store, tokens: _Tokens, path: str, j: int, at: int) -> tuple[bool, str]:
    """Flip byte `at` of the file (in chunk j's record), read j, restore the byte, read j again."""
    cold, old = not store.is_resident(0, j), _poke(path, at)
    try:
        store.pin(0, [j])
        seen = "no error"
    except CorruptChunkError as e:
        seen = f"CorruptChunkError ({e})"
    finally:
        _poke(path, at, old)
    again = _read_equal(store, tokens, j)
    ok = cold and seen.startswith("Corrupt") and again == (True, True)
    return ok, f"byte {at} flipped (chunk {j}): {seen}, restored: reads back equal {again[1]}"


def _row(check: str, ok: bool, value, detail: str) -> dict:
    return {"check": check, "ok": bool(ok), "value": value, "detail": detail}


def _rss() -> int:  # peak resident memory of this process, bytes (ru_maxrss is KiB on Linux)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main_store(args, root: Path) -> list[dict]:
    """Rows fill, modes, checksums, close of one store under `root`."""
    spec = _spec(args, str(root))
    store = spec.new_store()
    fill_s, _ = _fill(store, args)
    st, (path,) = store.stats(), store.spill_files
    m, h = st["chunks"], spec.host_chunks
    rows = [_row("fill", st["disk_chunks"] * 2 >= m and os.path.getsize(path) == st["disk_bytes"],
                 f"{st['disk_bytes'] / GIB:.3f} GiB",
                 f"{args.tokens} tokens, {m} chunks: {st['disk_chunks']} records on disk "
                 f"({st['disk_chunks'] * spec.layout.chunk_bytes / st['disk_bytes']:.3f}x zstd), "
                 f"{h} in host memory ({st['host_bytes'] / GIB:.2f} GiB); fill {fill_s:.1f} s "
                 f"({args.tokens * spec.layout.token_bytes / fill_s / 1e6:.0f} MB/s); peak RSS {_rss() / GIB:.2f} GiB")]  # fmt: skip
    store_dir, proc_dir = Path(path).parent, Path(path).parent.parent
    modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in (path, store_dir, proc_dir, root)}
    want = {p: 0o600 if p == path else 0o700 for p in modes}
    rows.append(_row("modes", modes == want, " ".join(f"{v:o}" for v in modes.values()), f"file, store dir, process dir, root {root}"))
    tokens, n = _Tokens(args), max(200, args.samples)
    sample = sorted({h + round(i * (m - 1 - h) / (n - 1)) for i in range(n)})
    reads = [_read_equal(store, tokens, j) for j in sample]
    cold, equal = sum(c for c, _ in reads), sum(e for _, e in reads)
    flips = [_corrupt(store, tokens, path, h, 0), _corrupt(store, tokens, path, m - 1, os.path.getsize(path) - 1)]
    rows.append(_row("checksums", cold == equal == len(sample) and all(ok for ok, _ in flips),
                     f"{equal}/{len(sample)} equal", f"chunks {sample[0]}..{sample[-1]}, {cold} read from disk; "
                     + "; ".join(text for _, text in flips)))  # fmt: skip
    paths = [Path(path), store_dir, proc_dir]
    store.close()
    gone = [not p.exists() for p in paths]
    rows.append(_row("close", all(gone) and not any(root.iterdir()), f"{sum(gone)}/{len(paths)} gone",
                     f"file, store dir, process dir removed by close(); root left empty: {not any(root.iterdir())}"))
    return rows


def crash(args, root: Path) -> dict:
    child = subprocess.Popen([sys.executable, __file__, "--child", "fill", *_child_args(args, root)],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = child.stdout.readline()  # the child has spilled the whole store
        report = json.loads(line.split(" ", 1)[1]) if line.startswith("SPILLED ") else None
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    if report is None:
        return _row("crash", False, "-", f"the child did not spill (exit {child.returncode})")
    left, kept = Path(report["dir"]), _tree_bytes(Path(report["dir"]))
    SpillDir(root).close()  # what a new store does first: reap the directories of dead processes
    ok = kept >= report["disk_bytes"] > 0 and not left.exists() and not any(root.iterdir())
    return _row("crash", ok, f"{kept / GIB:.3f} GiB reclaimed",
                f"child pid {child.pid} filled {args.tokens} tokens ({report['fill_s']:.1f} s, peak RSS "
                f"{report['rss'] / GIB:.2f} GiB), SIGKILL (exit {child.returncode}); its dir {left.name} "
                f"stayed with {kept} bytes; a new SpillDir reaped it: gone {not left.exists()}")  # fmt: skip


def disk_full(args, root: Path, how: str) -> dict:
    """A child spills onto a `how` ("tmpfs" | "fsize") limited disk of --full-gib."""
    limit = int(args.full_gib * GIB)
    root.mkdir(parents=True, exist_ok=True)
    pre = None
    if how == "tmpfs":
        if os.geteuid() != 0 or shutil.which("mount") is None:
            return _row("disk full (tmpfs)", True, "skipped", "mounting a tmpfs needs root")
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={limit},mode=0700", "tmpfs", str(root)], check=True)
    else:
        def pre():  # in the child: writes past `limit` fail with EFBIG instead of killing it
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        r = subprocess.run([sys.executable, __file__, "--child", "full", *_child_args(args, root)],
                           stdout=subprocess.PIPE, text=True, preexec_fn=pre)  # fmt: skip
        lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
        res = json.loads(lines[0].split(" ", 1)[1]) if lines else {"error": f"no result (exit {r.returncode})"}
        left = _tree_bytes(root), sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        used = shutil.disk_usage(root).used if how == "tmpfs" else None
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", "-l", str(root)], check=False)
    ok = res.get("ok", False) and left == (0, []) and used in (None, 0)
    return _row(f"disk full ({how})", ok, f"at {res.get('at_tokens', '-')} tok",
                f"{res.get('error')}; {res.get('detail', '')}; after close: {left[0]} bytes, "
                f"{len(left[1])} entries left" + (f", tmpfs used {used} bytes" if used is not None else ""))


def _child_args(args, root: Path) -> list[str]:
    return ["--tokens", str(args.tokens), "--piece", str(args.piece), "--seed", str(args.seed),
            "--host-frac", str(args.host_frac), "--disk-dir", str(root)]  # fmt: skip


def child(args) -> None:
    store = _spec(args, args.disk_dir).new_store()
    fill_s, failed = _fill(store, args, catch=args.child == "full")
    if args.child == "fill":  # say where it spilled, and wait to be killed
        print("SPILLED " + json.dumps({"dir": str(Path(store.spill_files[0]).parent.parent), "fill_s": fill_s,
                                       "rss": _rss(), "disk_bytes": store.stats()["disk_bytes"]}), flush=True)  # fmt: skip
        time.sleep(3600)
    res = {"ok": False, "error": "the disk never filled"}
    if failed is not None:
        p, e, st0 = failed
        st, size = store.stats(), os.path.getsize(store.spill_files[0])
        now = {key: st[key] for key in ("tokens", "chunks", "disk_chunks", "disk_bytes", "host_bytes")}
        same = all(st0[key] == value for key, value in now.items())
        j = store.n_chunks(0) - 1  # the last disk record before the failed append reads back whole
        equal = _read_equal(store, _Tokens(args), j)[1]
        advice = all(w in str(e) for w in ("is full", "--disk-dir", "--host-mem"))
        res = {"ok": same and size == st0["disk_bytes"] and equal and advice, "error": f"DiskFullError: {e}",
               "at_tokens": st["tokens"], "detail": f"append of piece {p} failed; store before == after: {same} "
               f"({now}); file {size} bytes == disk_bytes; last record (chunk {j}) reads back equal: {equal}"}  # fmt: skip
    store.close()
    print("RESULT " + json.dumps(res), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--piece", type=int, default=8192, help="tokens per append (generated on the fly)")
    ap.add_argument("--host-frac", type=float, default=0.375, help="of the body in host memory; the rest spills")
    ap.add_argument("--samples", type=int, default=256, help="disk records read back (at least 200)")
    ap.add_argument("--full-gib", type=float, default=None,
                    help="the size of the disk that fills (default: 1, at most half the spill)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--disk-dir", default="/tmp/spill-scale/run", help="root of the runs' spill dirs (must not exist)")
    ap.add_argument("--json", default=None, help="write the rows and the run's facts to this JSON file")
    ap.add_argument("--child", choices=["fill", "full"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.child:
        return child(args)
    base = Path(args.disk_dir)
    if base.exists():
        sys.exit(f"error: {base} exists: give a --disk-dir that does not (the run removes it at the end)")
    need = int(args.tokens * (1 - args.host_frac)) * 2 * HKV * D * 2  # the spill, uncompressed
    free = shutil.disk_usage(base.parent).free
    if free < need + 2 * GIB:
        sys.exit(f"error: {free / GIB:.1f} GiB free under {base.parent}, the run needs {need / GIB:.1f} + 2 GiB")
    args.full_gib = args.full_gib or min(1.0, need / 2 / GIB)
    print(f"# python {' '.join(sys.argv)}\n# {machine()}, {free / GIB:.1f} GiB free, at most "
          f"{need / GIB:.2f} GiB spilled at once")  # fmt: skip
    try:
        rows = main_store(args, base / "store")
        rows.append(crash(args, base / "crash"))
        rows += [disk_full(args, base / f"full-{how}", how) for how in ("tmpfs", "fsize")]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    emit(SimpleNamespace(json=None), f"spill files of a {args.tokens}-token tiered store (1 layer, 8x128 bf16)", rows)
    if args.json:
        facts = {"command": "python " + " ".join(sys.argv), "machine": machine(),
                 "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), **{k: v for k, v in vars(args).items()
                 if k not in ("json", "child")}, "all_ok": all(r["ok"] for r in rows), "rows": rows}  # fmt: skip
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(facts, indent=1) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
