"""offload-chat through click's runner on the real embedded model."""

import re

import pytest
import torch
from click.testing import CliRunner

from offload.cli.chat import main
from offload.cli.units import parse_bytes, parse_count

NEEDLE_DOC = (
    "Notes from the harbour office.\n\n" + "The boats came in late and the nets were mended. " * 40
    + "\nThe secret word is 'pineapple'.\n" + "Gulls circled over the pier all afternoon. " * 40
)


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def test_prompt_over_document_answers_from_it(model, runner, tmp_path):
    doc = tmp_path / "notes.md"
    doc.write_text(NEEDLE_DOC, encoding="utf-8")
    r = runner.invoke(main, ["-f", str(doc), "-p", "What is the secret word?", "-n", "24"])
    assert r.exit_code == 0, r.output
    assert "pineapple" in r.stdout.lower()
    assert "tok/s" in r.stderr and "prompt" in r.stderr  # the speed line goes to stderr


@pytest.mark.parametrize("policy", ["quest", "snapkv"])
def test_budget_with_a_policy_answers(model, runner, tmp_path, policy):
    """--budget with --policy / --layer-budget / --select-every runs sparse decode end to end (the
    needle sits in the body, not the window; a budget of 1/2 keeps it findable for every policy)."""
    doc = tmp_path / "notes.md"
    doc.write_text(NEEDLE_DOC, encoding="utf-8")
    r = runner.invoke(main, ["-f", str(doc), "-p", "What is the secret word?", "-n", "12", "--budget", "1/2",
                             "--policy", policy, "--layer-budget", "squeeze", "--select-every", "4",
                             "--kv-chunk", "8"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "pineapple" in r.stdout.lower() and "hit" in r.stderr


def test_stdin_document(model, runner):
    r = runner.invoke(main, ["-f", "-", "-p", "What is the secret word?", "-n", "24"], input=NEEDLE_DOC)
    assert r.exit_code == 0, r.output
    assert "pineapple" in r.stdout.lower()


@pytest.mark.parametrize("text,n", [("200k", 200_000), ("128K", 131_072), ("131072", 131_072), ("8k", 8000)])
def test_ctx_parsing(text, n):
    assert parse_count(text) == n


@pytest.mark.parametrize("text", ["", "abc", "-5", "1.5", "0", "12x"])
def test_ctx_parsing_rejects(text):
    with pytest.raises(ValueError):
        parse_count(text)


def test_bytes_parsing():
    assert parse_bytes("24G") == 24 * 2**30 and parse_bytes("24GiB") == 24 * 2**30
    assert parse_bytes("24GB") == 24 * 10**9 and parse_bytes("512M") == 512 * 2**20
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_errors_have_exit_codes_and_no_traceback(model, runner, tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("The sky is blue. " * 200, encoding="utf-8")
    binary = tmp_path / "x.txt"
    binary.write_bytes(b"\x00\x01\x02binary")
    latin = tmp_path / "l.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    cases = [
        (["-f", str(tmp_path / "missing.md"), "-p", "hi"], 2, "does not exist"),
        (["-f", str(binary), "-p", "hi"], 2, "binary"),
        (["-f", str(latin), "-p", "hi"], 2, "UTF-8"),
        (["-f", str(tmp_path / "a.pdf"), "-p", "hi"], 2, "does not exist"),
        (["-m", "org/some-model", "-p", "hi"], 6, "never downloads"),
        (["-c", "300", "-f", str(doc), "-p", "hi"], 4, "tokens"),
        (["-c", "lots", "-p", "hi"], 2, "not a token count"),
        (["--budget", "1/8", "--policy", "magic", "-p", "hi"], 2, "'magic' is not one of"),
        (["--budget", "1/8", "--layer-budget", "steep", "-p", "hi"], 2, "'steep' is not one of"),
        (["--budget", "1/8", "--split", "steep", "-p", "hi"], 2, "'steep' is not one of"),
        (["--budget", "1/8", "--select-every", "0", "-p", "hi"], 2, "--select-every"),
        (["--budget", "1/8", "--kv-chunk", "0", "-p", "hi"], 2, "--kv-chunk"),
    ]
    for args, code, words in cases:
        r = runner.invoke(main, args)
        assert r.exit_code == code, (args, r.output)
        assert words in r.output, (args, r.output)
        assert "Traceback" not in r.output


def test_help_documents_exit_codes(runner):
    r = runner.invoke(main, ["--help"])
    assert r.exit_code == 0
    for code in ("3 memory plan", "4 context overflow", "5 bad session", "6 model not found"):
        assert code in r.output


@pytest.mark.parametrize("args,tokens", [
    (["--budget", "1/8"], True),  # the default policy, token: single tokens
    (["--budget", "1/8", "--select-unit", "chunk"], False),
    (["--budget", "1/8", "--policy", "bound"], False),
])
def test_select_unit_reaches_the_config(args, tokens):
    from offload.cli.options import offload_config

    config = offload_config(main.make_context("offload-chat", list(args)).params)
    assert config.sparse.policy.selects_tokens is tokens


@pytest.mark.parametrize("args,rest", [
    (["--budget", "1/8"], "k4v4"),  # on by default (auto: while the plan fits it)
    (["--budget", "1/8", "--rest", "none"], None),
    (["--budget", "1/8", "--rest", "K8V4"], "k8v4"),
])
def test_rest_reaches_the_config(args, rest):
    from offload.cli.options import offload_config

    config = offload_config(main.make_context("offload-chat", list(args)).params)
    assert (config.sparse.rest.label if config.sparse.rest else None) == rest


def test_rest_auto_drops_the_rest_only_when_the_plan_fits_without_it():
    """--rest auto: a GPU budget that fits the plan without the rest but not with it plans without it
    and says so on stderr; --rest k4v4 asked for explicitly is refused there (exit 3)."""
    from offload.cli.options import checked_plan
    from offload.plan import MIN_BUDGET_TOKENS

    def need(rest):
        _, m = checked_plan(main.make_context("offload-chat", ["-c", "8k", "--budget", "1/16", "--rest", rest,
                                                                "--gpu-mem", "64G", *gpu_plan]).params)  # fmt: skip
        tok = m.kv_token_bytes
        return (m.weights_bytes + m.reserve_bytes + m.prefill_bytes + m.edge_bytes + m.abstracts_bytes
                + min(m.budget_tokens, MIN_BUDGET_TOKENS) * tok)  # fmt: skip

    gpu_plan = ["--device", "cuda", "--dry-run"]  # a plan for a GPU this machine may lack
    lean, full = need("none"), need("k4v4")
    assert full > lean
    gpu = str((lean + full) // 2)
    args = ["-c", "8k", "--budget", "1/16", "--gpu-mem", gpu, *gpu_plan, "-p", "hi"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "--rest auto: k4v4 does not fit" in r.output
    r = CliRunner().invoke(main, [*args, "--rest", "k4v4"])
    assert r.exit_code == 3 and "--rest none drops it" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, [*args[:-2], "--gpu-mem", "64G", "-p", "hi"])
    assert r.exit_code == 0 and "--rest auto" not in r.output  # room for it: kept, nothing said


def test_rest_auto_on_a_cpu_holding_the_kv_drops_the_rest():
    """On a CPU the rest costs more than exact attention (decode_choice.fit_rest): --rest auto
    drops it and says why; --rest k4v4 asked for keeps it; a GPU plan with room keeps it."""
    from offload.cli.options import checked_plan

    def rest(*extra):
        config, _ = checked_plan(main.make_context("offload-chat", ["-c", "4k", "--budget", "1/16",
                                                                    *extra]).params)  # fmt: skip
        return config.sparse.rest.label if config.sparse.rest else None

    assert rest("--device", "cpu") is None
    assert rest("--device", "cpu", "--rest", "k4v4") == "k4v4"
    assert rest("--device", "cuda", "--dry-run", "--gpu-mem", "64G") == "k4v4"
    r = CliRunner().invoke(main, ["-c", "4k", "--budget", "1/16", "--device", "cpu", "--dry-run", "-p", "hi"])
    assert r.exit_code == 0 and "--rest auto: on a CPU" in r.output and "costs more than exact" in r.output


def test_a_bad_rest_is_a_usage_error():
    r = CliRunner().invoke(main, ["-p", "hi", "--budget", "1/8", "--rest", "k3v2"])
    assert r.exit_code == 2 and "--rest" in r.output and "Traceback" not in r.output


def test_select_unit_token_with_a_chunk_policy_is_a_clear_error(tmp_path):
    doc = tmp_path / "d.txt"
    doc.write_text("hello")
    r = CliRunner().invoke(main, ["-f", str(doc), "-p", "hi", "--budget", "1/8", "--policy", "quest",
                                  "--select-unit", "token"])  # fmt: skip
    assert r.exit_code != 0 and "--select-unit applies to --policy token" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("args,chunk,store", [
    (["--budget", "1/8", "--kv-chunk", "16"], 16, "tiered"),
    (["--budget", "1/8"], 8, "tiered"),  # the default policy, token: 8-token chunks
    (["--budget", "1/8", "--policy", "quest"], 16, "tiered"),
    (["--kv-chunk", "32"], 32, "dense"),
])
def test_kv_chunk_reaches_the_config(args, chunk, store):
    from offload.cli.options import offload_config

    params = main.make_context("offload-chat", list(args)).params
    config = offload_config(params)
    from offload.store_spec import StoreSpec

    spec = StoreSpec.derive(config, 2, 1, 8, torch.float32, "cpu")
    assert (StoreSpec.chunk_of(config), spec.kind) == (chunk, store)


@pytest.mark.parametrize("args,split", [([], "adaptive"), (["--split", "squeeze"], "squeeze"),
                                        (["--layer-budget", "uniform"], "uniform")])  # fmt: skip
def test_split_and_its_alias_reach_the_sparse_config(args, split, monkeypatch):
    from offload.cli.options import offload_config

    config = offload_config(main.make_context("offload-chat", ["--budget", "1/8", *args]).params)
    assert config.sparse.split == split
    monkeypatch.setenv("OFFLOAD_SPLIT", "uniform")
    config = offload_config(main.make_context("offload-chat", ["--budget", "1/8"]).params)
    assert config.sparse.split == "uniform"


def test_help_groups_the_options():
    """--help has three sections: the common options, sparse decode (with --budget), and memory and
    tiers; each option sits under its own."""
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    out = r.output
    heads = ["Options:", "Decode: exact or sparse (--budget):", "Memory and tiers:"]
    at = [out.index(h) for h in heads]
    assert at == sorted(at)

    def section(opt):
        pos = re.search(rf"\n  {opt}[ ,]", out).start()  # the option's own line, not a mention in help text
        return [h for h, a in zip(heads, at) if a < pos][-1]  # the last heading above it

    assert section("--budget") == section("--policy") == section("--split") == "Decode: exact or sparse (--budget):"
    assert section("--gpu-mem") == section("--host-mem") == section("--kv-chunk") == "Memory and tiers:"
    assert section("-f, --file") == "Options:"


def test_threads_option_sets_the_compute_threads(model, runner):
    before = torch.get_num_threads()
    try:
        r = runner.invoke(main, ["-p", "Hi", "-n", "2", "-t", "1", "-v"])
        assert r.exit_code == 0, r.output
        assert "1 CPU threads" in r.stderr and torch.get_num_threads() == 1
        bad = runner.invoke(main, ["-p", "Hi", "--threads", "0"])
        assert bad.exit_code == 2 and "--threads" in bad.output
    finally:
        torch.set_num_threads(before)

