"""What a user reads and what offload creates for them: the overflow advice parses, private parents
under any umask, no conversion bar without -v, the speed line in MiB, the CLI's bad-option matrix
(exit 2, one line, no traceback)."""

import os
import re
import stat
import sys

import pytest
from click.testing import CliRunner

import offload
from offload.cli.chat import main
from offload.cli.speed import fmt_size
from offload.cli.units import parse_count
from offload.paths import cache_dir
from offload.tiers.spill import SpillDir


def test_overflow_advice_is_a_value_the_parser_accepts(model):
    doc = "word " * 9000  # past the 8k context
    with pytest.raises(offload.ContextOverflowError) as err:
        offload.generate(model, doc, max_new_tokens=10)
    value = re.search(r"--ctx (\S+)\)", str(err.value)).group(1)
    assert parse_count(value) == err.value.n_prompt_tokens + 10
    r = CliRunner().invoke(main, ["-c", value, "--dry-run"])
    assert r.exit_code in (0, 3), r.output


@pytest.fixture
def umask_000():
    old = os.umask(0)
    yield
    os.umask(old)


def _modes(top, leaf):
    out, p = [], leaf
    while p != top:
        out.append(stat.S_IMODE(os.stat(p).st_mode))
        p = p.parent
    return out


def test_parents_we_create_are_private_under_umask_000(model, tmp_path, monkeypatch, umask_000):
    monkeypatch.delenv("OFFLOAD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "missing" / "cache"))
    assert _modes(tmp_path, cache_dir("models")) == [0o700] * 4
    spill = SpillDir(tmp_path / "a" / "b" / "spill")
    assert _modes(tmp_path, spill.path) == [0o700] * 5
    spill.close()
    with offload.Chat(model) as chat:
        chat.send("Hi", max_new_tokens=1)
        chat.save_session(tmp_path / "x" / "y" / "talk.session")
    assert _modes(tmp_path, tmp_path / "x" / "y" / "talk.session") == [0o700] * 3
    os.chmod(tmp_path, 0o755)  # an existing parent is left as it was
    with offload.Chat(model) as chat:
        chat.send("Hi", max_new_tokens=1)
        chat.save_session(tmp_path / "t.session")
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o755


def test_conversion_progress_is_hidden_unless_progress_bars_are_on(capfd):
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from offload.loading import _progress_as_configured

    hf_logging.disable_progress_bar()
    try:
        with _progress_as_configured():
            for _ in tqdm(range(3), desc="Converting"):
                pass
    finally:
        hf_logging.enable_progress_bar()
    assert "Converting" not in capfd.readouterr().err


def test_speed_line_shows_mib_below_a_gib():
    assert fmt_size(13 * 2**20) == "13.0 MiB" and fmt_size(3 * 2**30) == "3.0 GiB"


BAD_OPTIONS = [["-c", "5,975"], ["-c", "0"], ["-c", "abc"], ["--budget", "2/1"], ["--budget", "x"],
               ["--gpu-mem", "lots"], ["--host-mem", "0"], ["-n", "0"], ["--temp", "-1"], ["--top-p", "0"],
               ["--top-p", "2"], ["--top-k", "-3"], ["--policy", "nope"], ["--layer-budget", "x"],
               ["--kv-chunk", "0"], ["--prefill-chunk", "0"], ["--select-every", "0"],
               ["--select-unit", "byte"], ["--seed", "-1"], ["--no-such-flag"], ["-f", "/no/such/doc.md"],
               ["-f", sys.executable], ["-f", "/"]]  # fmt: skip


@pytest.mark.parametrize("args", BAD_OPTIONS, ids=" ".join)
def test_bad_option_exits_2_with_a_message(args):
    r = CliRunner().invoke(main, args + ["-p", "hi", "--dry-run"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and ("Error" in r.output or "error" in r.output)
