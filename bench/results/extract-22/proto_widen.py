# Scratch experiment of session 13 (issue 22), kept to reproduce extract-4k.md: monkeypatches
# offload internals; not part of the package. Run: .venv/bin/python THIS_FILE [args as in extract-4k.md]
import sys, json, dataclasses, torch
import offload
from offload.eval.runner import plan_samples
from offload.eval.modes import parse_mode, sparse_config
from offload.eval.replay import Prefilled, greedy_many
from offload.sparse.selector import Selector
torch.set_num_threads(2)
CFG = {"tau": None, "widen": 4}
STATS = {"calls": 0, "widened": 0}
orig = Selector._choose
def patched(self, layer, q, n_chunks, units, k, scaling, rows_k, whole):
    out = orig(self, layer, q, n_chunks, units, k, scaling, rows_k, whole)
    if CFG["tau"] is None or whole or k == 0: return out
    STATS["calls"] += 1
    _, mass = self.state.bound_and_mass(layer, q, n_chunks, scaling, per_token=True)  # [B,Hkv,N]
    r = mass.shape[1]
    ids = out.view(1, r, -1)
    got = mass.gather(-1, ids.clamp(min=0)).masked_fill(ids < 0, 0).sum(-1) / mass.sum(-1)
    if float(got.min()) >= CFG["tau"]: return out
    STATS["widened"] += 1
    k2 = min(units, CFG["widen"] * k)
    rk2 = None if rows_k is None else [min(units, CFG["widen"] * x) for x in rows_k]
    return orig(self, layer, q, n_chunks, units, k2, scaling, rk2, whole)
Selector._choose = patched
model = offload.load_model(None)
for spec in sys.argv[1:]:
    task, idx, b = spec.split(":"); idx = int(idx)
    s = plan_samples(task, model.tokenizer, 4096, 30, 0)[idx]
    ids = model.encode(s.prompt)
    pre = Prefilled.capture(model, ids)
    cfg = sparse_config(model.config, parse_mode(f"sparse@{b}"), "token", len(ids))
    sp = dataclasses.replace(model, config=cfg)
    print("==", spec, s.references)
    for tau in (None, 0.5, 0.7, 0.85):
        CFG["tau"] = tau; STATS.update(calls=0, widened=0)
        o = greedy_many([sp], pre, 10, model.eos_ids)[0]
        t = model.tokenizer.decode(o)
        print(f"  tau={tau}: {t[:20]!r} {'OK' if s.references[0] in t else 'LOST'} widened {STATS['widened']}/{STATS['calls']}", flush=True)
    pre.close()
