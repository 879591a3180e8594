"""The repo's top-level folders install as one namespace (DESIGN.md §3)."""

import importlib.util
from pathlib import Path

import offload
import offload.cli
import offload.kernels
import offload.tiers

REPO = Path(__file__).resolve().parents[1]


def test_subpackages_map_to_top_level_folders():
    assert Path(offload.__file__).resolve().parent == REPO / "offload"
    assert Path(offload.kernels.__file__).resolve().parent == REPO / "kernels"
    assert Path(offload.tiers.__file__).resolve().parent == REPO / "tiers"
    assert Path(offload.cli.__file__).resolve().parent == REPO / "cli"


def test_no_top_level_kernels_or_cli_from_this_repo():
    # HF publishes a `kernels` package that transformers probes for: ours must not shadow it.
    for name in ("kernels", "cli", "tiers"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            assert REPO not in Path(spec.origin).resolve().parents, f"top-level {name} resolves into the repo"


def test_console_script_is_declared():
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("offload-chat") == "offload.cli.chat:main"
