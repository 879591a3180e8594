"""`--help` in sections: the options a user needs first, then sparse-decode tuning, then memory and
tiers. A command built with `cls=GroupedCommand` lists each option under the section its first long
name is mapped to in `SECTIONS` (anything unmapped: the first section)."""

from __future__ import annotations

import click

__all__ = ["GroupedCommand", "SECTIONS"]

SECTIONS = {
    "Decode: exact or sparse (--budget)": ("--budget", "--policy", "--split", "--rest", "--select-every", "--select-unit",
                                      "--dense"),
    "Memory and tiers": ("--device", "--dtype", "--kv-chunk", "--prefill-chunk", "--gpu-mem", "--host-mem",
                         "--disk-dir"),
}


class GroupedCommand(click.Command):
    """A click command whose --help lists options by section (basic first)."""

    def format_options(self, ctx, formatter):
        where = {name: title for title, names in SECTIONS.items() for name in names}
        groups: dict[str, list] = {"Options": []}
        for title in SECTIONS:
            groups[title] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
            groups[where.get(longs[0] if longs else "", "Options")].append(record)
        for title, records in groups.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)
