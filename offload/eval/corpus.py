"""Haystack material available offline on any machine with Python: RULER's noise sentences, natural
English prose taken from the standard library's own docstrings, and a word list drawn from that prose.

The prose is deterministic for a given Python version: modules are read in the fixed order of
`STDLIB_MODULES`, members in sorted order, and only members defined in the module itself are kept
(re-exports differ between platforms). Only prose paragraphs survive: no code, doctests or tables.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import warnings
from functools import lru_cache

__all__ = [
    "NOISE_SENTENCES",
    "STDLIB_MODULES",
    "natural_text_source",
    "natural_sentences",
    "vocabulary",
]

# RULER's noise haystack, one sentence per unit so lengths can be fitted to a few tokens.
NOISE_SENTENCES = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)

# Pure-Python modules present in every CPython build (no tkinter, curses, ssl, sqlite3, lzma...).
STDLIB_MODULES = (
    "argparse", "textwrap", "difflib", "statistics", "fractions", "calendar", "string", "shlex",
    "configparser", "logging", "logging.handlers", "typing", "dataclasses", "enum", "inspect",
    "tarfile", "zipfile", "shutil", "tempfile", "threading", "queue", "sched", "smtplib", "ftplib",
    "imaplib", "ipaddress", "gettext", "pprint", "contextlib", "functools", "copy", "random",
    "secrets", "base64", "codecs", "optparse", "glob", "fnmatch", "filecmp", "tokenize", "ast",
    "pickle", "socketserver", "http.client", "http.server", "http.cookiejar", "urllib.parse",
    "urllib.request", "email.message", "email.utils", "json", "unittest.case", "unittest.mock",
    "doctest", "pdb", "cmd", "timeit", "trace", "subprocess", "selectors", "mailbox", "csv",
    "netrc", "plistlib", "wave", "colorsys", "heapq", "bisect", "weakref", "abc", "numbers",
    "collections", "pathlib", "asyncio.events", "asyncio.tasks", "concurrent.futures._base",
    "multiprocessing.pool", "zipimport", "importlib.metadata",
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_TOKEN = re.compile(r"[A-Za-z_'\\]+")  # words with their apostrophes, underscores, backslashes
_WORD = re.compile(r"[a-z]{4,10}")


def natural_text_source() -> str:
    """One line naming where the prose comes from, for result files."""
    return (
        f"docstrings of {len(STDLIB_MODULES)} Python {sys.version.split()[0]} standard-library modules "
        f"(offload.eval.corpus.STDLIB_MODULES, fixed order; prose paragraphs only)"
    )


def _docstrings(modname: str) -> list[str]:
    """The module's docstring, then those of its own classes/functions (and their methods), sorted."""
    try:
        module = importlib.import_module(modname)
    except ImportError:  # a stripped-down Python: skip rather than fail (the source line says which)
        return []
    docs = [inspect.getdoc(module) or ""]
    members = vars(module)
    for name in sorted(members):
        obj = members[name]
        if name.startswith("_") or getattr(obj, "__module__", None) != modname:
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        docs.append(inspect.cleandoc(obj.__doc__) if isinstance(obj.__doc__, str) else "")
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                fn = vars(obj)[attr]
                if isinstance(fn, (staticmethod, classmethod)):
                    fn = fn.__func__
                if not attr.startswith("_") and inspect.isfunction(fn) and isinstance(fn.__doc__, str):
                    docs.append(inspect.cleandoc(fn.__doc__))
    return docs


def _is_prose(lines: list[str], text: str) -> bool:
    if any(line.startswith((" ", "\t", ">>>", "...")) for line in lines):
        return False  # indented code, doctest, continuation of a table
    if len(text.split()) < 8 or not text.endswith("."):
        return False
    letters = sum(c.isalpha() or c == " " for c in text)
    return letters >= 0.85 * len(text)


@lru_cache(maxsize=1)
def natural_sentences() -> tuple[str, ...]:
    """Prose sentences in corpus order (~50k words, ~70k SmolLM2 tokens on Python 3.11)."""
    sentences: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases (typing.io, ...) warn on access
        for modname in STDLIB_MODULES:
            for doc in _docstrings(modname):
                for para in re.split(r"\n\s*\n", doc):
                    lines = para.split("\n")
                    text = " ".join(line.strip() for line in lines)
                    if _is_prose(lines, text):
                        sentences.extend(s for s in _SENTENCE_END.split(text) if s)
    return tuple(sentences)


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """Lowercase words of 4-10 letters seen at least 3 times in the prose, sorted: needle keys and
    cwe's words. Tokens with apostrophes, underscores or escapes ("aren't", "\\return") are skipped."""
    counts: dict[str, int] = {}
    for sentence in natural_sentences():
        for token in _TOKEN.findall(sentence):
            if _WORD.fullmatch(token):
                counts[token] = counts.get(token, 0) + 1
    return tuple(sorted(w for w, c in counts.items() if c >= 3))
