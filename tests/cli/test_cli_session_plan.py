"""offload-chat: --session reuse, --dry-run plans, and the session/plan exit codes."""

import json

import pytest
from click.testing import CliRunner

from offload.cli.chat import main

DOC = "Harbour notes. " + "The tide turned twice and the nets were dried on the wall. " * 60 + (
    "The ferry captain is called Marguerite. " + "Rain came in from the west. " * 60
)


@pytest.fixture()
def doc(tmp_path):
    p = tmp_path / "harbour.md"
    p.write_text(DOC, encoding="utf-8")
    return p


def _prompt_tokens(stderr: str) -> int:
    line = next(l for l in stderr.splitlines() if l.startswith("prompt "))
    return int(line.split()[1].replace(",", ""))


def test_session_second_run_does_no_prefill(model, doc, tmp_path):
    runner = CliRunner()
    session = tmp_path / "harbour.session"
    args = ["-f", str(doc), "-n", "12", "--session", str(session), "-p", "Who is the ferry captain?"]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert session.is_dir() and "session saved" in first.stderr
    cold = _prompt_tokens(first.stderr)
    second = runner.invoke(main, args)
    assert second.exit_code == 0, second.output
    assert _prompt_tokens(second.stderr) <= 1 < cold  # the document came from the session
    assert second.stdout == first.stdout
    other = runner.invoke(main, args[:-1] + ["Where does the rain come from?"])
    assert other.exit_code == 0, other.output
    assert _prompt_tokens(other.stderr) < 40  # only the new question was prefilled


def test_bad_sessions_exit_5_and_are_not_overwritten(model, doc, tmp_path):
    import torch

    from offload.kvstore import DenseKVStore
    from offload.session import save_session

    runner = CliRunner()
    junk = tmp_path / "junk.session"
    junk.mkdir()
    (junk / "header.json").write_text("{broken")
    r = runner.invoke(main, ["-f", str(doc), "-p", "hi", "--session", str(junk)])
    assert r.exit_code == 5 and "Traceback" not in r.output
    assert (junk / "header.json").read_text() == "{broken"
    foreign = tmp_path / "foreign.session"
    store = DenseKVStore(2, 1, 8, torch.float32, "cpu")
    store.append(0, torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 3, 8))
    store.append(1, torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 3, 8))
    save_session(foreign, store, [1, 2, 3], "another-model")
    r = runner.invoke(main, ["-f", str(doc), "-p", "hi", "--session", str(foreign)])
    assert r.exit_code == 5 and "different model" in r.output
    plain = tmp_path / "notes.txt"
    plain.write_text("mine")
    r = runner.invoke(main, ["-f", str(doc), "-p", "hi", "-n", "2", "--session", str(plain)])
    assert r.exit_code == 5 and plain.read_text() == "mine"


def test_dry_run_json_fields(model):
    r = CliRunner().invoke(main, ["--dry-run", "--json", "-c", "200k", "--gpu-mem", "24G"])
    assert r.exit_code in (0, 3), r.output
    plan = json.loads(r.stdout)
    for key in ("ctx", "kv_bytes", "weights_bytes", "hot_set_bytes", "abstracts_bytes", "host_pool_bytes",
                "disk_bytes", "fits", "max_ctx", "budget_tokens"):
        assert key in plan
    assert plan["ctx"] == 200_000
    assert plan["kv_bytes"] == 200_000 * plan["kv_token_bytes"]
    assert r.exit_code == (0 if plan["fits"] else 3)


def test_plan_that_does_not_fit_exits_3_with_the_largest_ctx(model):
    r = CliRunner().invoke(main, ["--dry-run", "-c", "8k", "--gpu-mem", "256M"])
    assert r.exit_code == 3 and "NO" in r.stdout
    r = CliRunner().invoke(main, ["-c", "8k", "--gpu-mem", "256M", "-p", "hi"])
    assert r.exit_code == 3 and "do not fit" in r.output and "Traceback" not in r.output


def test_env_vars_map_onto_flags(model):
    r = CliRunner().invoke(main, ["--dry-run", "--json"], env={"OFFLOAD_CTX": "4k"})
    assert r.exit_code == 0 and json.loads(r.stdout)["ctx"] == 4000
