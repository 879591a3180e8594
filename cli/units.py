"""Parsing and printing the sizes users type and read: `200k` tokens, `24G` bytes, `1.3 GiB`."""

from __future__ import annotations

import re

import click

__all__ = ["parse_count", "parse_bytes", "parse_budget", "fmt_bytes", "CountType", "BytesType", "BudgetType"]

_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*$")


def parse_count(text: str) -> int:
    """Token counts as llama.cpp users write them: `200k` = 200,000, `128K` = 131,072 (upper case K/M
    are binary, lower case decimal), plain integers as is."""
    m = _COUNT.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a token count (examples: 4096, 200k, 128K)")
    value, unit = float(m.group(1)), m.group(2)
    scale = {"": 1, "k": 1000, "m": 1000**2, "K": 1024, "M": 1024**2}[unit]
    n = value * scale
    if n != int(n) or n <= 0:
        raise ValueError(f"{text!r} is not a positive whole number of tokens")
    return int(n)


def parse_bytes(text: str) -> int:
    """Memory sizes: `24G`, `24GiB`, `512M`, `1.5T` are binary (GiB etc.); `24GB` is decimal."""
    m = _BYTES.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a size (examples: 24G, 512MiB, 64GB)")
    value, unit, suffix = float(m.group(1)), m.group(2).upper(), m.group(3) or ""
    base = 1000 if suffix in ("B", "b") and unit else 1024
    n = value * base ** " KMGT".index(unit or " ")
    if n < 1:
        raise ValueError(f"{text!r} must be at least one byte")
    return int(n)


def fmt_bytes(n: int | float) -> str:
    return f"{n / 2**30:.1f} GiB"


class CountType(click.ParamType):
    name = "N"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_count(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class BytesType(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_bytes(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def parse_budget(text: str) -> int | float:
    """`2048` (tokens per layer), `1/16` or `0.0625` (fraction of the context, in (0, 1))."""
    s = str(text).strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            value = float(num) / float(den)
        elif re.fullmatch(r"\d+", s) or s[-1:] in "kKmM":
            return parse_count(s)
        else:
            value = float(s)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{text!r} is not a budget (examples: 2048, 4k, 1/16, 0.05)") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"{text!r}: a fractional budget must be in (0, 1); use a token count otherwise")
    return value


class BudgetType(click.ParamType):
    name = "BUDGET"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return value
        if str(value).strip().lower() == "auto":
            return "auto"
        try:
            return parse_budget(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)
