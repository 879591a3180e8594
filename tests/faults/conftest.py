"""Fixtures of the fault suite: a small real tmpfs for the disk-full tests."""

import subprocess

import pytest

from fault_helpers import mount_tmpfs


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs: a few chunks of SmolLM2's KV fit, a 2k-token prompt does not."""
    path = tmp_path / "small-disk"
    mount_tmpfs(path, "4m")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)
