"""A real interactive session through a pseudo-terminal: ask, Ctrl-C mid-answer, ask again, /exit."""

import os
import shutil
import signal
import sys
from pathlib import Path

import pexpect


def _offload_chat() -> str:
    exe = Path(sys.executable).parent / "offload-chat"
    return str(exe) if exe.exists() else shutil.which("offload-chat")


def test_ask_interrupt_ask_again_exit(model):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OFFLOAD_MAX_NEW_TOKENS="300", TERM="dumb")
    # A runner started in the background inherits SIGINT ignored, and so would the child: reset it,
    # as a terminal user's shell does.
    child = pexpect.spawn(_offload_chat(), [], env=env, encoding="utf-8", timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        child.expect_exact("> ")
        child.sendline("Write a very long story about a fox who travels around the world.")
        child.expect_exact("the world.")  # the terminal's echo of the question
        child.expect(r"\w+ \w+ \w+ \w+ \w+")  # the answer is streaming
        child.sendintr()  # Ctrl-C
        child.expect_exact("[stopped]")
        child.expect_exact("> ")
        child.sendline("/stats")
        child.expect(r"context [\d,]+ / [\d,]+ tokens, 2 messages")
        child.expect_exact("> ")
        child.sendline("What is 2 + 2? Answer with one number.")
        child.expect(r"prompt [\d,]+ tok in .*\| gen \d+ tok")  # the speed line after the answer
        child.expect_exact("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
