# Scratch (session 14, issue 22): one sample decoded with several rests from one prefill. Not package code.
# Run: .venv/bin/python THIS_FILE x k4v2,k8v2,k4v4,k8v4,k8v8,none records_3key:19:1/16
import sys, json, dataclasses, torch, time
import offload
from offload.eval.runner import plan_samples
from offload.eval.modes import parse_mode, sparse_config
from offload.eval.replay import Prefilled, greedy_many
torch.set_num_threads(2)
model = offload.load_model(None)
rests = sys.argv[2].split(",")
for spec in sys.argv[3:]:
    task, idx, budget = spec.split(":"); idx = int(idx)
    s = plan_samples(task, model.tokenizer, 4096, 30, 0)[idx]
    ids = model.encode(s.prompt)
    pre = Prefilled.capture(model, ids)
    cfg = sparse_config(model.config, parse_mode(f"sparse@{budget}"), "token", len(ids))
    ms = [dataclasses.replace(model, config=cfg.replace(sparse=dataclasses.replace(cfg.sparse, rest=None if r == "none" else r))) for r in rests]
    outs = greedy_many(ms, pre, 40, model.eos_ids)
    for r, o in zip(rests, outs):
        txt = model.tokenizer.decode(o)
        print(spec, r, repr(txt[:64]), [x for x in s.references if x in txt], flush=True)
    pre.close()
