# Scratch experiment of session 13 (issue 22), kept to reproduce extract-4k.md: monkeypatches
# offload internals; not part of the package. Run: .venv/bin/python THIS_FILE [args as in extract-4k.md]
import sys, json, dataclasses, torch
import offload
sys.path.insert(0, "/work/main/bench")
from _common import with_fields
from offload.eval.runner import plan_samples
from offload.eval.modes import parse_mode, sparse_config
from offload.eval.replay import Prefilled, greedy_many
torch.set_num_threads(2)
model = offload.load_model(None)
variants = [("token", "1/32", {}), ("token+uniform", "1/32", {}), ("token", "1/32", {"share": 0.0}),
            ("token", "1/32", {"share": 1.0}), ("token", "1/32", {"whole_below": 0.0}), ("token", "1/8", {}), ("token", "1/4", {})]
for spec in sys.argv[1:]:
    task, idx = spec.split(":"); idx = int(idx)
    s = plan_samples(task, model.tokenizer, 4096, 30, 0)[idx]
    ids = model.encode(s.prompt)
    pre = Prefilled.capture(model, ids)
    ms = []
    for pol, b, f in variants:
        cfg = with_fields(sparse_config(model.config, parse_mode(f"sparse@{b}"), pol, len(ids)), **f)
        ms.append(dataclasses.replace(model, config=cfg))
    outs = greedy_many(ms, pre, 10, model.eos_ids)
    print("==", spec, s.references)
    for (pol, b, f), o in zip(variants, outs):
        t = model.tokenizer.decode(o); print(f"  {pol}@{b} {f}: {t[:20]!r} {'OK' if s.references[0] in t else 'LOST'}", flush=True)
    pre.close()
