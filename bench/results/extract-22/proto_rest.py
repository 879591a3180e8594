# Scratch experiment of session 13 (issue 22), kept to reproduce extract-4k.md: monkeypatches
# offload internals; not part of the package. Run: .venv/bin/python THIS_FILE [args as in extract-4k.md]
import sys, json, dataclasses, torch
import offload
from offload.eval.runner import plan_samples
from offload.eval.modes import parse_mode, sparse_config
from offload.eval.replay import Prefilled, greedy_many
from offload.tiers.decode_attention import DecodeAttention
torch.set_num_threads(2)
MODE = {"m": None, "cm": 16}
orig = DecodeAttention.attend
def patched(self, layer, q, scaling):
    out = orig(self, layer, q, scaling)
    if out is None or MODE["m"] is None: return out
    st, sel = self.store, self.selector
    chosen = sel._kept[layer][0]
    K, V = st.read_layer(layer)
    b, h, _, d = q.shape; hkv = K.shape[1]; g = h // hkv; n = K.shape[2]
    lay = st.layout; s0 = lay.sinks; m = st.n_chunks(layer); body = m * lay.chunk
    qg = q[:, :, 0].reshape(b, hkv, g, d).float()
    logits = torch.einsum("bkgd,bknd->bkgn", qg, K.float()) * scaling
    read = torch.zeros(hkv, n, dtype=torch.bool); read[:, :s0] = True; read[:, s0 + body:] = True
    for r in range(hkv):
        ids = chosen[r][chosen[r] >= 0]
        read[r, s0 + ids] = True
    mx = logits.amax(-1, keepdim=True)
    w = torch.exp(logits - mx)
    zs = (w * read).sum(-1, keepdim=True)
    os_ = out[:, 0].reshape(b, hkv, g, d).float()
    rest = (~read).clone(); rest[:, :s0] = False; rest[:, s0 + body:] = False
    cm = MODE["cm"]
    vb = V[:, :, s0:s0 + body].float()
    nb = body // cm
    vbar = vb[:, :, :nb * cm].reshape(b, hkv, nb, cm, d).mean(3).repeat_interleave(cm, 2)
    vbar = torch.cat([vbar, vb[:, :, nb * cm:]], 2)  # tail exact
    if MODE["m"] == "exact":
        rw = (w * rest)[..., s0:s0 + body]; vals = vb
    elif MODE["m"] == "exactlogit_mean":
        rw = (w * rest)[..., s0:s0 + body]; vals = vbar
    else:  # sketch logits
        stt = sel.state
        p = stt.basis.basis[layer]
        q_low = torch.matmul(qg, p)
        levels = stt.lo[layer, :, :, :, :body].float(); sc = stt.aux[layer, :, :, :1, :body].float()
        est = torch.matmul(q_low, levels) * sc * scaling
        rw = torch.exp(est - mx) * rest[None, :, None, s0:s0 + body]
        vals = vbar if MODE["m"] == "est_mean" else vb
    num = torch.einsum("bkgn,bknd->bkgd", rw, vals)
    o = (zs * os_ + num) / (zs + rw.sum(-1, keepdim=True))
    return o.reshape(b, 1, h, d).to(out.dtype)
DecodeAttention.attend = patched

model = offload.load_model(None)
doc = json.load(open(sys.argv[1]))
by = {(r["task"], r["index"], r["mode"], r["policy"]): r for r in doc["records"]}
for spec in sys.argv[2:]:
    task, idx, budget = spec.split(":")
    idx = int(idx)
    s = plan_samples(task, model.tokenizer, 4096, 30, 0)[idx]
    ids = model.encode(s.prompt)
    pre = Prefilled.capture(model, ids)
    cfg = sparse_config(model.config, parse_mode(f"sparse@{budget}"), "token", len(ids))
    sp = dataclasses.replace(model, config=cfg)
    print("==", spec, "dense:", repr(by[(task, idx, "dense", None)]["prediction"][:30]), "ref", s.references)
    for mode, cmv in [(None, 16), ("exact", 16), ("exactlogit_mean", 16), ("est_exactv", 16), ("est_mean", 16), ("est_mean", 64)]:
        MODE.update(m=mode, cm=cmv)
        out = greedy_many([sp], pre, 12, model.eos_ids)[0]
        txt = model.tokenizer.decode(out)
        print(f"  {mode}/{cmv}: {txt[:30]!r} {'OK' if s.references[0] in txt else 'LOST'}", flush=True)
    pre.close()
