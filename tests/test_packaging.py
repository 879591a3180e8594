"""The repo's top-level folders install as one namespace and never shadow another package (DESIGN.md §3).

`kernels/`, `tiers/` and `cli/` are not regular packages (no `__init__.py`): from the repo root on
`sys.path` they are at most namespace portions, which any installed package of the same name outranks
(Hugging Face's `kernels`, which transformers >= 5.25 imports). The build maps them to `offload.kernels`
etc. ([tool.setuptools.package-dir]); in the source tree `offload/<name>` links to them.
"""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import offload
import offload.cli.chat
import offload.kernels.dispatch
import offload.tiers.store

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("kernels", "tiers", "cli")


def _python(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python ARGS` in the repo root. With `-c` or `-m` the working directory goes first on sys.path
    (as for `python -` and a notebook opened there)."""
    return subprocess.run([sys.executable, *args], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=600)


def test_subpackages_map_to_top_level_folders():
    assert Path(offload.__file__).resolve().parent == REPO / "offload"
    assert Path(offload.kernels.dispatch.__file__).resolve().parent == REPO / "kernels"
    assert Path(offload.tiers.store.__file__).resolve().parent == REPO / "tiers"
    assert Path(offload.cli.chat.__file__).resolve().parent == REPO / "cli"


def test_top_level_folders_are_not_regular_packages():
    for name in FOLDERS:
        assert (REPO / name).is_dir() and not (REPO / name / "__init__.py").exists(), name


def test_installed_packages_win_over_our_folders_from_the_repo_root(tmp_path):
    # Stand-ins for other distributions' top-level `kernels`, `tiers` and `cli`, later on sys.path
    # than the repo root (the working directory of `python -c`): each must still be the one imported.
    for name in FOLDERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"WHO = 'other {name}'\n")
    code = "import kernels, tiers, cli; print(kernels.WHO, tiers.WHO, cli.WHO, sep=',')"
    r = _python("-c", code, env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "other kernels,other tiers,other cli"


def test_hf_kernels_package_is_not_shadowed_from_the_repo_root():
    # What `import kernels` finds from the repo root must be the installed distribution's own file
    # (the venv may itself lie inside the repo, so "not under the repo" would not say it).
    try:
        dist = importlib.metadata.distribution("kernels")  # Hugging Face's; transformers >= 5.25 needs it
    except importlib.metadata.PackageNotFoundError:
        dist = None
    code = "import importlib.util as u; s = u.find_spec('kernels'); print(s.origin if s else None)"
    r = _python("-c", code)
    assert r.returncode == 0, r.stderr
    origin = r.stdout.strip()
    if dist is None:  # nothing to shadow: at most our folder as a namespace portion, with no file
        assert origin == "None"
    else:
        assert Path(origin).resolve() == Path(dist.locate_file("kernels/__init__.py")).resolve()


def test_import_transformers_and_load_model_from_the_repo_root():
    code = ("import warnings; warnings.simplefilter('error', FutureWarning)\n"
            "import transformers, offload\n"
            "m = offload.load_model()\n"
            "print(offload.generate(m, 'The capital of France is', max_new_tokens=3))")
    r = _python("-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_python_m_offload_from_the_repo_root():
    r = _python("-m", "offload", "-n", "4", "-p", "Say hi.")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    # No deprecation notice of a dependency reaches the user (transformers 5.25 renamed the cache kwarg).
    assert "Warning" not in r.stderr and "deprecated" not in r.stderr, r.stderr


def test_wheel_installs_one_namespace(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        str(src), "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("offload-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("offload/kernels/dispatch.py", "offload/tiers/store.py", "offload/cli/chat.py",
                 "offload/cli/serve.py", "offload/serve/app.py", "offload/serve/page.html"):  # the page is package data
        assert path in names, path
    tops = {n.split("/")[0] for n in names}
    assert not tops & set(FOLDERS), tops


def test_console_scripts_are_declared():
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("offload-chat") == "offload.cli.chat:main"
    assert scripts.get("offload-eval") == "offload.eval.cli:main"
    assert scripts.get("offload-serve") == "offload.cli.serve:main"


def test_bench_scripts_shadow_no_installed_module(tmp_path):
    # `python bench/x.py` puts bench/ first on sys.path: a script named like an installed top-level
    # module (bench/kernels.py vs Hugging Face's `kernels`, which transformers imports) breaks them all.
    names = sorted(p.stem for p in (REPO / "bench").glob("*.py"))
    code = f"import importlib.util as u; print([n for n in {names!r} if u.find_spec(n)])"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"bench scripts named like installed modules: {r.stdout.strip()}"
