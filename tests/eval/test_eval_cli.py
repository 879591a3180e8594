"""Modes, lengths, budgets and the CLI's handling of bad input (no model load, no traceback)."""

from fractions import Fraction

import pytest
import torch
from click.testing import CliRunner

from offload import OffloadConfig
from offload.eval.cli import main
from offload.eval.errors import EvalError
from offload.eval.modes import Mode, parse_length, parse_lengths, parse_mode, parse_modes, sparse_config


def test_lengths():
    assert parse_lengths("1k,2K,4096,8k") == [1024, 2048, 4096, 8192]
    assert parse_length("1500") == 1500
    for bad in ["1.5k", "0", "-1", "k", "1m", ""]:
        with pytest.raises(EvalError):
            parse_length(bad)
    with pytest.raises(EvalError):
        parse_lengths("1k,,2k")


def test_modes_and_budgets():
    assert parse_modes("full,dense,sparse@1/16,sparse@512,sparse@2k") == [
        Mode("full"), Mode("dense"), Mode("sparse", Fraction(1, 16)), Mode("sparse", 512), Mode("sparse", 2048)
    ]
    assert parse_mode("sparse@0.0625") == Mode("sparse", Fraction(1, 16))
    assert parse_mode("sparse@1/16").label == "sparse@1/16" and parse_mode("sparse@2k").label == "sparse@2k"
    assert parse_mode("sparse@1/16").budget_tokens(4000) == 250
    assert parse_mode("sparse@512").budget_tokens(4000) == 512
    for bad in ["sparse", "sparse@", "sparse@0", "sparse@3/2", "sparse@1/0", "sparse@x", "dense2", "Full"]:
        with pytest.raises(EvalError):
            parse_mode(bad)


def test_sparse_config_errors_clearly():
    with pytest.raises(EvalError, match="needs a selection policy"):
        sparse_config(OffloadConfig(), Mode("sparse", 512), None, 4000)
    with pytest.raises(EvalError, match="policy"):
        sparse_config(OffloadConfig(), Mode("sparse", 512), "no-such-policy", 4000)
    with pytest.raises(EvalError, match="not a sparse mode"):
        sparse_config(OffloadConfig(), Mode("dense"), "x", 4000)
    # --kv-chunk reaches the sparse modes through the base config
    from offload.store_spec import StoreSpec

    assert StoreSpec.chunk_of(sparse_config(OffloadConfig(kv_chunk=8), Mode("sparse", 512), "token", 4000)) == 8
    cfg = sparse_config(OffloadConfig(), Mode("sparse", 512), "quest+squeeze", 4000, select_every=3)
    assert (cfg.sparse.policy_name, cfg.sparse.split, cfg.sparse.budget, cfg.sparse.select_every) == ("quest", "squeeze", 512, 3)
    with pytest.raises(EvalError, match="unknown split 'wide'"):
        sparse_config(OffloadConfig(), Mode("sparse", 512), "quest+wide", 4000)
    # NAME[+SPLIT]/REST: the rest a sparse mode attends with (default k4v4; none = as published)
    assert sparse_config(OffloadConfig(), Mode("sparse", 512), "token", 4000).sparse.rest.label == "k4v4"
    cfg = sparse_config(OffloadConfig(), Mode("sparse", 512), "quest+uniform/none", 4000)
    assert (cfg.sparse.policy_name, cfg.sparse.split, cfg.sparse.rest) == ("quest", "uniform", None)
    assert sparse_config(OffloadConfig(), Mode("sparse", 512), "token/k8v4", 4000).sparse.rest.label == "k8v4"
    cfg = sparse_config(OffloadConfig(), Mode("sparse", 512), "quest/none+squeeze", 4000)  # either order
    assert (cfg.sparse.policy_name, cfg.sparse.split, cfg.sparse.rest) == ("quest", "squeeze", None)
    with pytest.raises(EvalError, match="rest must be kNvM"):
        sparse_config(OffloadConfig(), Mode("sparse", 512), "token/k3", 4000)


@pytest.mark.parametrize("args, message", [
    (["--tasks", "niah,passkey"], "unknown task 'niah'"),
    (["--lengths", "1k,huge"], "'huge' is not a length"),
    (["--modes", "full,turbo"], "unknown mode 'turbo'"),
    (["--modes", "sparse@1/16"], "needs a selection policy"),
    (["--modes", "sparse@1/16", "--policy", "no-such-policy"], "no-such-policy"),
    (["--modes", "sparse@1/16", "--policy", "bound,quest+wide"], "unknown split 'wide'"),
    (["--modes", "sparse@1/16", "--policy", "token/k1v1"], "k_bits must be one of (2, 4, 8), got 1"),
    (["--modes", "sparse@1/16", "--policy", "bound,,quest"], "without empty items"),
    (["--samples", "0"], "--samples"),
    (["--limit", "0"], "--limit"),
    (["--select-every", "0"], "--select-every"),
    (["--kv-chunk", "0"], "--kv-chunk"),
    (["--recall", "full", "--kv-chunk", "8"], "--kv-chunk applies to task runs"),
    (["--recall", "no-such-policy"], "unknown selection policy"),
    (["--recall", "full", "--budgets", "1/0"], "not a budget"),
    (["--dtype", "int4"], "--dtype"),
    (["--device", "tpu"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
])
def test_cli_bad_input_is_a_usage_error(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where torch sees no GPU")
def test_cli_cuda_without_a_gpu_is_a_clear_error():
    result = CliRunner().invoke(main, ["--device", "cuda", "--tasks", "passkey"])
    assert result.exit_code == 2 and "torch sees no CUDA device" in result.output
    assert "Traceback" not in result.output


def test_cli_help():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for opt in ["--model", "--tasks", "--lengths", "--modes", "--policy", "--samples", "--seed", "--json"]:
        assert opt in result.output


def test_cli_missing_model_exits_cleanly(tmp_path):
    result = CliRunner().invoke(main, ["--model", str(tmp_path / "nope"), "--tasks", "passkey"])
    assert result.exit_code == 6
    assert "offload never downloads" in result.output and "Traceback" not in result.output


def test_cli_end_to_end_tiny(tmp_path):
    """One 512-token passkey sample in full and dense mode: the table, the elapsed time, the JSON."""
    import json

    path = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["--tasks", "passkey", "--lengths", "512", "--modes", "full,dense",
                                       "--samples", "1", "--max-new-tokens", "8", "--json", str(path),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.split()[:5] == ["task", "length", "n", "full", "dense"] for line in lines)
    row = next(line for line in lines if line.startswith("passkey")).split()
    assert row[:3] == ["passkey", "512", "1"] and row[3] == row[4]
    assert "elapsed" in result.stdout and "standard-library" in result.stdout
    doc = json.loads(path.read_text())
    assert doc["meta"]["finished"] and doc["meta"]["max_new_tokens_cap"] == 8
    assert (doc["meta"]["device"], doc["meta"]["dtype"]) == ("cpu", "float32")
    assert [r["mode"] for r in doc["records"]] == ["full", "dense"]


def test_cli_resume_keeps_answers(tmp_path):
    """--resume reuses the answers in --json and runs only the missing ones."""
    import json

    path = tmp_path / "r.json"
    base = ["--tasks", "passkey", "--lengths", "512", "--modes", "full", "--max-new-tokens", "8",
            "--json", str(path), "--no-progress"]
    assert CliRunner().invoke(main, base + ["--samples", "1"]).exit_code == 0
    first = json.loads(path.read_text())["records"][0]
    doc = json.loads(path.read_text())
    doc["meta"]["samples"] = 2  # pretend the 1-sample run was a 2-sample run cut short
    doc["records"][0]["prediction"] = "kept"
    path.write_text(json.dumps(doc))
    result = CliRunner().invoke(main, base + ["--samples", "2", "--resume"])
    assert result.exit_code == 0, result.output
    recs = json.loads(path.read_text())["records"]
    assert [r["index"] for r in recs] == [0, 1] and recs[0]["prediction"] == "kept"
    assert recs[0]["tokens"] == first["tokens"]
    bad = CliRunner().invoke(main, base + ["--samples", "2", "--seed", "1", "--resume"])
    assert bad.exit_code == 2 and "--resume" in bad.output
    other = CliRunner().invoke(main, base + ["--samples", "2", "--select-every", "3", "--resume"])
    assert other.exit_code == 2 and "select_every" in other.output  # answers of another decode
    # full answers do not depend on the chunk: resumable under another --kv-chunk
    assert CliRunner().invoke(main, base + ["--samples", "2", "--kv-chunk", "8", "--resume"]).exit_code == 0


def test_cli_sparse_policies_share_a_prefill(tmp_path):
    """Several policies (one with squeeze layer budgets) at one budget, --limit 1 of 3 samples: one
    column per policy, the answers-vs-full table, and records naming their policy."""
    import json

    path = tmp_path / "r.json"
    result = CliRunner().invoke(main, [
        "--tasks", "passkey", "--lengths", "512", "--modes", "full,sparse@1/8",
        "--policy", "bound,snapkv+squeeze", "--samples", "3", "--limit", "1", "--max-new-tokens", "6",
        "--select-every", "2", "--kv-chunk", "8", "--json", str(path), "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    head = next(line for line in result.stdout.splitlines() if line.startswith("task")).split()
    assert head[3:] == ["full", "bound@1/8", "x", "full", "snapkv+squeeze@1/8", "x", "full"]
    assert "answers vs full" in result.stdout and "identical" in result.stdout
    doc = json.loads(path.read_text())
    recs = doc["records"]
    assert doc["meta"]["select_every"] == 2 and doc["meta"]["kv_chunk"] == 8
    assert [(r["mode"], r["policy"], r["index"]) for r in recs] == [
        ("full", None, 0), ("sparse@1/8", "bound", 0), ("sparse@1/8", "snapkv+squeeze", 0)]
    assert all(r["n_prompt_tokens"] == recs[0]["n_prompt_tokens"] for r in recs)
    again = CliRunner().invoke(main, [  # the same run at the policies' default chunks: not resumable
        "--tasks", "passkey", "--lengths", "512", "--modes", "full,sparse@1/8", "--policy", "bound,snapkv+squeeze",
        "--samples", "3", "--max-new-tokens", "6", "--select-every", "2", "--json", str(path), "--resume",
        "--no-progress"])  # fmt: skip
    assert again.exit_code == 2 and "kv_chunk=8" in again.output and "16" in again.output


def test_sparse_chunks_name_each_policys_chunk_when_they_differ():
    from offload.eval.cli import _sparse_chunks

    full, sparse = parse_modes("full,dense"), parse_modes("full,sparse@1/16")
    cfg = OffloadConfig()
    assert _sparse_chunks(cfg, full, ["token"]) is None  # no sparse mode: nothing selects
    assert _sparse_chunks(cfg, sparse, ["token"]) == 1  # single tokens
    assert _sparse_chunks(cfg, sparse, ["bound", "quest+squeeze"]) == 16
    assert _sparse_chunks(cfg, sparse, ["token", "bound+squeeze"]) == {"token": 1, "bound+squeeze": 16}
    assert _sparse_chunks(cfg.replace(kv_chunk=8), sparse, ["quest", "bound"]) == 8
    assert _sparse_chunks(cfg.replace(kv_chunk=16), sparse, ["token", "bound"]) == {"token": 1, "bound": 16}
