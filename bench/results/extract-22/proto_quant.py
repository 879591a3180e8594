# Scratch experiment of session 14 (issue 22), kept to reproduce extract-rest.md: a quantised rest term
# (KIVI-like), monkeypatching offload internals; not package code.
# Run: .venv/bin/python THIS_FILE bits|groups RUN.json task:idx:budget ...  (outputs: proto_quant*.txt)
import sys, json, dataclasses, torch
import offload
from offload.eval.runner import plan_samples
from offload.eval.modes import parse_mode, sparse_config
from offload.eval.replay import Prefilled, greedy_many
from offload.tiers.decode_attention import DecodeAttention
torch.set_num_threads(2)
MODE = {"kb": None, "vb": None, "G": 32, "vg": 32, "kt": False}

def qdq(x, bits, dim_groups):
    """asymmetric uniform quantisation of x over the last dim (already grouped)."""
    if bits is None: return x
    lo = x.amin(-1, keepdim=True); hi = x.amax(-1, keepdim=True)
    s = ((hi - lo) / (2**bits - 1)).clamp(min=1e-8)
    return ((x - lo) / s).round() * s + lo

def quant_k(K, bits, G):  # K [hkv, n, d]: per channel over G tokens
    if bits is None: return K
    h, n, d = K.shape; m = n // G
    head = K[:, :m*G].reshape(h, m, G, d).transpose(-1, -2)  # [h, m, d, G]
    out = qdq(head, bits, None).transpose(-1, -2).reshape(h, m*G, d)
    return torch.cat([out, K[:, m*G:]], 1)

def quant_v(V, bits, vg=32):  # per token, vg-channel groups
    if bits is None: return V
    h, n, d = V.shape
    return qdq(V.reshape(h, n, d // vg, vg), bits, None).reshape(h, n, d)

orig = DecodeAttention.attend
def patched(self, layer, q, scaling):
    out = orig(self, layer, q, scaling)
    if out is None or MODE["kb"] == "off": return out
    st, sel = self.store, self.selector
    chosen = sel._kept[layer][0]
    K, V = st.read_layer(layer)
    b, h, _, d = q.shape; hkv = K.shape[1]; g = h // hkv; n = K.shape[2]
    lay = st.layout; s0 = lay.sinks; m = st.n_chunks(layer); body = m * lay.chunk
    qg = q[:, :, 0].reshape(b, hkv, g, d).float()
    Kb = K[0, :, s0:s0+body].float(); Vb = V[0, :, s0:s0+body].float()
    Kq = quant_v(Kb, MODE["kb"], MODE["G"]) if MODE["kt"] else quant_k(Kb, MODE["kb"], MODE["G"]); Vq = quant_v(Vb, MODE["vb"], MODE["vg"])
    logits = torch.einsum("bkgd,bknd->bkgn", qg, K.float()) * scaling
    mx = logits.amax(-1, keepdim=True)
    read = torch.zeros(hkv, n, dtype=torch.bool); read[:, :s0] = True; read[:, s0 + body:] = True
    for r in range(hkv):
        ids = chosen[r][chosen[r] >= 0]
        read[r, s0 + ids] = True
    zs = (torch.exp(logits - mx) * read).sum(-1, keepdim=True)
    os_ = out[:, 0].reshape(b, hkv, g, d).float()
    rest = ~read[:, s0:s0+body]
    lq = torch.einsum("bkgd,knd->bkgn", qg, Kq) * scaling
    rw = torch.exp(lq - mx) * rest[None, :, None]
    num = torch.einsum("bkgn,knd->bkgd", rw, Vq)
    o = (zs * os_ + num) / (zs + rw.sum(-1, keepdim=True))
    return o.reshape(b, 1, h, d).to(out.dtype)
DecodeAttention.attend = patched

model = offload.load_model(None)
doc = json.load(open(sys.argv[2]))
by = {(r["task"], r["index"], r["mode"], r["policy"]): r for r in doc["records"]}
BITS = [dict(kb="off", vb=None), dict(kb=None, vb=None), dict(kb=8, vb=8), dict(kb=4, vb=4), dict(kb=2, vb=2),
        dict(kb=4, vb=2), dict(kb=2, vb=4), dict(kb=None, vb=2), dict(kb=2, vb=None)]  # K per channel, G=32 tokens
GROUPS = [dict(kb=4, vb=2, G=128, vg=64), dict(kb=3, vb=2, G=32, vg=32), dict(kb=4, vb=1, G=32, vg=32), dict(kb=4, vb=2, G=8, vg=64), dict(kb=4, vb=2, G=32, vg=32, kt=True), dict(kb=4, vb=2, G=64, vg=64, kt=True), dict(kb=3, vb=2, G=8, vg=64)]
modes = BITS if sys.argv[1] == "bits" else GROUPS
for spec in sys.argv[3:]:
    task, idx, budget = spec.split(":")
    idx = int(idx)
    s = plan_samples(task, model.tokenizer, 4096, 30, 0)[idx]
    ids = model.encode(s.prompt)
    pre = Prefilled.capture(model, ids)
    cfg = sparse_config(model.config, parse_mode(f"sparse@{budget}"), "token", len(ids))
    sp = dataclasses.replace(model, config=cfg)
    dense = by[(task, idx, "dense", None)]["prediction"]
    want = [r for r in s.references if r in dense]
    print("==", spec, "dense:", repr(dense[:40]), "want", want, flush=True)
    for md in modes:
        MODE.update(kt=False, G=32, vg=32); MODE.update(md)
        out = greedy_many([sp], pre, 40 if task == "records_3key" else 12, model.eos_ids)[0]
        txt = model.tokenizer.decode(out)
        ok = sum(r in txt for r in want)
        print(f"  {md}: {txt[:40]!r} {ok}/{len(want)}", flush=True)
    pre.close()
