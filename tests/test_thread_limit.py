"""A system that refuses new threads (a container's pids.max, `ulimit -u`, no memory for a
thread's stack): a command that needs one says so in one line, exits 1 and changes nothing.

The refusal is real: the command runs with a 1 GiB default thread stack (RLIMIT_STACK, which
glibc reserves for every new thread) inside a 512 MiB address space (RLIMIT_AS), so every
pthread_create fails, for root too (RLIMIT_NPROC does not bind root). Processes still start:
git runs as usual.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys

import pytest
from conftest import CLIResult, VaultProject
from helpers import (
    assert_refused,
    committed_prod,  # noqa: F401 (a fixture)
    copied_vault_project,  # noqa: F401 (a fixture)
    deploy,
    fresh_project,
    head,
    wipe_home,
)
from test_refusals import unchanged
from test_trust_upgrade import legacy_vault

from vault.errors import from_os_error

GiB = 1 << 30
ADDRESS_SPACE = 512 << 20
LARGE = 18_000_000  # above envelope.CDC_LARGE: opened and sealed on worker threads


def _refuse_threads() -> None:
    resource.setrlimit(resource.RLIMIT_STACK, (GiB, GiB))
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def without_threads(p: VaultProject, *args: str) -> CLIResult:
    proc = subprocess.run(
        [sys.executable, "-m", "vault", "--sst-home", str(p.home), *args],
        cwd=p.root,
        env=p.env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_refuse_threads,
    )
    return CLIResult(proc.returncode, proc.stdout, proc.stderr)


def assert_thread_refused(result: CLIResult) -> None:
    line = assert_refused(result, 1, "refused to start a thread", "pids.max", out=None)
    assert "ulimit -u" in line


def test_the_limits_refuse_a_thread_and_nothing_else() -> None:
    probe = (
        "import subprocess, threading\n"
        "assert subprocess.run(['git', '--version'], capture_output=True).returncode == 0\n"
        "threading.Thread(target=int).start()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, preexec_fn=_refuse_threads
    )
    assert proc.returncode == 1 and "can't start new thread" in proc.stderr, proc.stderr


def test_prepare_that_cannot_start_a_thread_writes_nothing(committed: VaultProject) -> None:
    p = committed
    wipe_home(p)
    with unchanged(p):
        assert_thread_refused(without_threads(p, "prepare", "prod"))
    assert not (p.home / "state").exists()
    assert p.cli("prepare", "prod").code == 0


@pytest.fixture(name="large_fernet")
def large_fernet_vault(tmp_path) -> VaultProject:
    """A fernet vault (no key record, so no history thread) with an 18 MB state committed."""
    p = fresh_project(tmp_path, backend="fernet")
    deploy(p, "prod", "v1", size=LARGE)
    result = p.cli("commit", "prod")
    assert result.code == 0, result.output
    return p


def test_large_prepare_that_cannot_start_its_decoders_writes_nothing(
    large_fernet: VaultProject,
) -> None:
    p = large_fernet
    deployed = p.state_file("app", "prod").read_bytes()
    wipe_home(p)
    with unchanged(p):
        assert_thread_refused(without_threads(p, "prepare", "prod"))
    assert p.cli("prepare", "prod").code == 0
    assert p.state_file("app", "prod").read_bytes() == deployed


def test_large_commit_that_cannot_start_a_thread_commits_nothing(
    large_fernet: VaultProject,
) -> None:
    p = large_fernet
    deploy(p, "prod", "v2", size=LARGE)
    was = head(p)
    with unchanged(p):
        assert_thread_refused(without_threads(p, "commit", "prod"))
    result = p.cli("commit", "prod")
    assert result.code == 0, result.output
    assert head(p) != was and p.git("status", "--porcelain") == ""


def test_scan_history_that_cannot_start_its_git_feeder_ends_git_and_says_so(
    committed: VaultProject,
) -> None:
    p = committed
    result = without_threads(p, "scan", "--history")
    assert_thread_refused(result)
    assert p.cli("scan", "--history").code == 0


def test_key_upgrade_needs_no_thread_and_prints_the_pin(tmp_path) -> None:
    """`key upgrade` seals a 0.1 vault's small files without a thread: under the limit it
    succeeds, and prints the pin of the record it signed. It used to verify that record again
    to print the pin (a history thread), and so exited 1 after committing the upgrade."""
    p = legacy_vault(tmp_path)
    was = head(p)
    result = without_threads(p, "key", "upgrade", "--yes")
    assert result.code == 0, result.output
    assert head(p) != was and p.git("status", "--porcelain") == ""
    pin = p.cli("key", "pin")
    assert pin.code == 0, pin.output
    assert f"SST_VAULT_PIN={pin.out.strip()}" in result.out.splitlines()


def test_a_refused_git_process_gets_the_same_advice() -> None:
    """fork's EAGAIN (pids.max reached: no new git) is an OSError the CLI turns into one line
    through `from_os_error`; a process limit cannot be set for root here, so this checks the
    mapping alone."""
    error = from_os_error(BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN)))
    assert "pids.max" in str(error) and error.exit_code == 1
