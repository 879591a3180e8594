"""offload.eval: RULER-synthetic tasks, passkey and multi-needle extraction, full attention vs offload.

- tasks: `TASKS` (name -> Task), `generate_sample(task, tokenizer, length, seed, depth)` -> `Sample`
- scoring: `string_match_all`, `string_match_part` (RULER)
- runner: `run_eval(model, tasks=, lengths=, modes=, samples=, seed=, policy=)` -> [`Record`]
- recall: `attention_recall(hf_model, tokenizer, policies, budgets)`; policies by name (`policy_names`) or as objects
- CLI: `offload-eval` (offload/eval/cli.py)
"""

from .errors import EvalError
from .modes import Mode, parse_lengths, parse_modes, sparse_config
from .policies import SelectionPolicy, get_policy, policy_names
from .recall import RecallResult, attention_recall
from .runner import Record, run_eval
from .sample import Sample
from .scoring import string_match_all, string_match_part
from .tasks import TASKS, generate_sample

__all__ = [
    "EvalError",
    "Mode",
    "parse_lengths",
    "parse_modes",
    "sparse_config",
    "SelectionPolicy",
    "get_policy",
    "policy_names",
    "RecallResult",
    "attention_recall",
    "Record",
    "run_eval",
    "Sample",
    "string_match_all",
    "string_match_part",
    "TASKS",
    "generate_sample",
]
