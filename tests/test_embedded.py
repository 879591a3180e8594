"""Embedded models by short name (`offload.embedded`): multi-part GGUFs assembled into the private
cache and checked against the sha256 their package lists; clear errors when a part is missing or
damaged."""

import hashlib
import os
import stat

import pytest

import offload
from offload.embedded import EMBEDDED, Embedded, assemble, embedded, embedded_names, expected_sha256
from offload.loading import resolve_model_dir


def _package(root, name: str, files: dict[str, bytes]) -> None:
    pkg = root / name
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for rel, data in files.items():
        (pkg / rel).write_bytes(data)


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """A two-part model in real packages on sys.path, and its Embedded entry."""
    a, b = os.urandom(3000), os.urandom(1234)
    sha = hashlib.sha256(a + b).hexdigest()
    _package(tmp_path, "offtest_part1", {"data/m.part00": a})
    _package(tmp_path, "offtest_part2", {"data/m.part01": b})
    _package(tmp_path, "offtest_meta", {"data/SHA256SUMS": f"{sha}  m.gguf\n".encode()})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("OFFLOAD_CACHE_DIR", str(tmp_path / "cache"))
    model = Embedded("offtest", "Test", "tests", (("offtest_part1", "data/m.part00"), ("offtest_part2", "data/m.part01")),
                     "m.gguf", ("offtest_meta", "data/SHA256SUMS"), "pip install offtest")  # fmt: skip
    return model, a + b


def test_parts_assemble_into_a_private_file_with_the_listed_sha(parts):
    model, data = parts
    path = assemble(model, expected_sha256(model))
    assert path.read_bytes() == data
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_a_damaged_part_is_refused_and_leaves_nothing(parts, tmp_path):
    model, _ = parts
    part = tmp_path / "offtest_part2" / "data" / "m.part01"
    data = part.read_bytes()
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # always another byte (random data may end in 0)
    with pytest.raises(offload.ModelFileError, match="reinstall"):
        assemble(model, expected_sha256(model))
    assert not any((tmp_path / "cache" / "gguf").iterdir())


def test_a_missing_package_names_the_install_command(parts):
    model, _ = parts
    gone = Embedded("x", "X", "", (("offtest_not_installed", "data/m"),), "m.gguf", None, "pip install xyz")
    with pytest.raises(offload.ModelNotFoundError, match="pip install xyz"):
        assemble(gone, "0" * 64)
    lost = Embedded("x", "X", "", model.parts, "other.gguf", model.sha_from, "")
    with pytest.raises(offload.ModelFileError, match="no sha256 for other.gguf"):
        expected_sha256(lost)


def test_short_names(gemma):
    assert embedded_names() == ("smollm2", "gemma3-270m") and embedded(None).name == "smollm2"
    assert embedded("llama") is None and len(EMBEDDED) == 2
    d = resolve_model_dir("gemma3-270m")
    assert d == gemma.model_dir and d.name.endswith(expected_sha256(embedded("gemma3-270m"))[:12])
    assert not (d.parent.parent / "gguf" / "gemma-3-270m-q4_k_m.gguf").exists()  # removed once converted
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    with pytest.raises(offload.ModelNotFoundError, match="gemma3-270m"):
        offload.load_model("gemma3-27b")
