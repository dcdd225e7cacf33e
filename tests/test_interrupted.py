"""Interrupted work: kill -9 at chosen points, stale git lock files, full disks, other platforms.

A real sst-vault process is stopped at a named step by the test hook SST_VAULT_TEST_PAUSE (it
sends itself SIGSTOP there, see safefs.pause_point) and then killed with SIGKILL, so every kill
lands exactly between two file operations. What it leaves behind is then met by the next real
command. Disk-full cases run on a real, small tmpfs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sstfake
from conftest import VaultProject, skip_or_fail
from helpers import (
    assert_refused,
    copied_vault_project,  # noqa: F401 (a fixture)
    deploy,
    head,
    kill_at,
    other_home,
    spawn_paused,
    stage_key,
    temp_files,
)

KINDS = ("passphrase", "app", "secret")


def home_versions(p: VaultProject, stage: str = "prod") -> dict[str, bytes]:
    return {k: p.state_file(k, stage).read_bytes() for k in KINDS}


def journals(p: VaultProject) -> list[Path]:
    folder = p.home / ".sst-vault" / "journal"
    return sorted(folder.glob("txn-*")) if folder.exists() else []


def repo_journals(p: VaultProject) -> list[Path]:
    """The journals of `change.Change` swaps of vault files, in the git directory."""
    folder = p.root / ".git" / "sst-vault-journal"
    return sorted(folder.glob("txn-*")) if folder.exists() else []


@pytest.fixture
def two_versions(vault_project: VaultProject, tmp_path: Path):
    """A laptop home synced at v1, and v2 committed (new passphrase, state and secrets)."""
    p = vault_project
    deploy(p, "prod", "v1-marker", secrets={"A": "one"})
    assert p.cli("commit", "prod").code == 0
    laptop = other_home(p, tmp_path / "laptop-home")
    assert laptop.cli("prepare", "prod").code == 0
    v1 = home_versions(laptop)
    # Every kind changes: a kill between two renames would pair files of two versions.
    sstfake.write_passphrase(p.home, p.app, "prod", stage_key("prod-v2"))
    deploy(p, "prod", "v2-marker", secrets={"A": "two"})
    assert p.cli("commit", "prod").code == 0
    v2 = home_versions(p)
    assert all(v1[k] != v2[k] for k in KINDS)
    return laptop, v1, v2


@pytest.mark.parametrize("step", ["txn-journaled", "txn-replaced-1", "txn-replaced-2"])
def test_prepare_killed_after_its_journal_is_rolled_forward(two_versions, step: str):
    laptop, _v1, v2 = two_versions
    kill_at(laptop, step, "prepare", "prod")
    assert journals(laptop), "the kill point is after the journal was written"
    # The next command (status here) finishes the change before it reports anything.
    result = laptop.cli("status", "--json", "prod")
    assert result.code == 0, result.output
    assert home_versions(laptop) == v2
    assert {row["state"] for row in json.loads(result.out)} == {"in sync"}, result.out
    assert journals(laptop) == []
    assert temp_files(laptop.home, laptop.root) == []
    result = laptop.cli("prepare", "prod")
    assert result.code == 0 and "written" not in result.err, result.output


def test_prepare_killed_between_renames_leaves_a_mix_that_prepare_repairs(two_versions):
    """The issue's case: passphrase of v2 beside state and secrets of v1, until the next command."""
    laptop, v1, v2 = two_versions
    kill_at(laptop, "txn-replaced-1", "prepare", "prod")
    mixed = home_versions(laptop)
    assert mixed["passphrase"] == v2["passphrase"] and mixed["app"] == v1["app"]
    result = laptop.cli("prepare", "prod")
    assert result.code == 0, result.output
    assert home_versions(laptop) == v2
    assert temp_files(laptop.home) == [] and journals(laptop) == []


def test_prepare_killed_before_its_journal_leaves_the_old_files_and_temp_files_go(two_versions):
    laptop, v1, _v2 = two_versions
    kill_at(laptop, "txn-start", "prepare", "prod")
    assert home_versions(laptop) == v1
    left = temp_files(laptop.home)
    assert left, "the kill point is after the new files were written"
    assert any(b"v2-marker" in f.read_bytes() for f in left)  # plaintext state, beside SST's
    assert not journals(laptop)

    doctor = laptop.cli("doctor")
    assert "Traceback" not in doctor.output
    line = next(ln for ln in doctor.out.splitlines() if "temporary" in ln)
    assert line.startswith("warn") and any(str(f) in line for f in left), doctor.out

    result = laptop.cli("status", "prod")
    assert result.code == 0, result.output
    assert temp_files(laptop.home) == []
    assert home_versions(laptop) == v1
    assert "warn  interrupted" not in laptop.cli("doctor").out
    assert laptop.cli("prepare", "prod").code == 0


def test_commit_killed_half_way_is_finished_by_the_next_commit(vault_project: VaultProject):
    p = vault_project
    deploy(p, "prod", "v1", secrets={"A": "1"})
    assert p.cli("commit", "prod").code == 0
    before = head(p)
    sstfake.write_passphrase(p.home, p.app, "prod", stage_key("prod-v2"))
    deploy(p, "prod", "v2", secrets={"A": "2"})

    kill_at(p, "txn-start", "commit", "prod")  # sealed files written, none in place
    assert temp_files(p.root)
    assert head(p) == before

    kill_at(p, "txn-replaced-1", "commit", "prod")  # one vault file replaced
    assert repo_journals(p)  # the swap was journaled
    states = dict(_rows(p))
    assert temp_files(p.root) == []  # status removed what both kills left
    # Rolled forward by status (change.Change journals its swap): never a mixed stage.
    assert states == {("prod", kind): "uncommitted" for kind in KINDS}, states
    assert not repo_journals(p)

    result = p.cli("commit", "prod")
    assert result.code == 0, result.output
    assert head(p) != before
    assert set(_rows(p).values()) == {"in sync"}
    assert temp_files(p.root, p.home) == []
    assert p.git("status", "--porcelain") == ""


def _rows(p: VaultProject) -> dict[tuple[str, str], str]:
    import json

    result = p.cli("status", "--json")
    assert result.code == 0, result.output
    return {(r["stage"], r["kind"]): r["state"] for r in json.loads(result.out)}


# --- stale git lock files --------------------------------------------------------------------


def test_stale_index_lock_is_named_and_run_does_not_deploy(vault_project: VaultProject):
    p = vault_project
    deploy(p, "prod", "v1")
    assert p.cli("commit", "prod").code == 0
    deploy(p, "prod", "v2")
    lock = p.root / ".git" / "index.lock"
    lock.write_bytes(b"")  # what a git killed during a commit leaves
    repo_before = p.snapshot_repo()

    line = assert_refused(p.cli("commit", "prod"), 1, str(lock), f"rm {lock}")
    assert "killed" in line
    assert p.snapshot_repo() == repo_before

    marker = p.root.parent / "deployed"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    result = p.cli("run", "--stage", "prod", "--no-lock", "--no-push", "--", *command)
    assert_refused(result, 1, str(lock), "rm ")
    assert not marker.exists(), "run deployed although it could not commit afterwards"

    doctor = p.cli("doctor")
    assert doctor.code == 1 and f"fail  interrupted: git lock file {lock}" in doctor.out
    lock.unlink()
    assert p.cli("commit", "prod").code == 0


def test_lock_file_appearing_during_commit_is_named_and_nothing_changes(
    vault_project: VaultProject,
):
    p = vault_project
    deploy(p, "prod", "v1")
    assert p.cli("commit", "prod").code == 0
    before, repo_before = head(p), p.snapshot_repo()
    deploy(p, "prod", "v2")
    proc = spawn_paused(p, "commit-git", "commit", "prod")  # sealed and in place, no git yet
    ref_lock = p.root / ".git" / "refs" / "heads" / "main.lock"
    ref_lock.write_bytes(b"")
    proc.send_signal(signal.SIGCONT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("Error: ") and str(ref_lock) in err and "rm " in err, err
    assert head(p) == before
    assert p.snapshot_repo() == repo_before, "the sealed files were not put back"
    assert p.git("status", "--porcelain") == ""
    assert temp_files(p.root, p.home) == []
    ref_lock.unlink()
    assert p.cli("commit", "prod").code == 0
    assert set(_rows(p).values()) == {"in sync"}


def test_commit_killed_before_git_shows_uncommitted_never_in_sync(vault_project: VaultProject):
    p = vault_project
    deploy(p, "prod", "v1")
    assert p.cli("commit", "prod").code == 0
    before = head(p)
    deploy(p, "prod", "v2")
    kill_at(p, "commit-git", "commit", "prod")
    assert head(p) == before
    states = _rows(p)
    assert states[("prod", "app")] == "uncommitted", states
    line = next(ln for ln in p.cli("status", "prod").out.splitlines() if " app " in ln)
    assert "uncommitted" in line and "in sync" not in line
    assert p.cli("commit", "prod").code == 0
    assert head(p) != before
    assert set(_rows(p).values()) == {"in sync"}


# --- full disks ------------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root; CI runs this as root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    assert mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr.strip()}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, leave: int) -> None:
    """Fill the file system of `folder` until only about `leave` bytes are free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    (folder / "filler").write_bytes(b"\0" * max(free - leave, 0))


def test_prepare_on_a_full_disk(vault_project: VaultProject, tmp_path: Path):
    p = vault_project
    deploy(p, "prod", "big", size=600_000, secrets={"A": "1"})
    assert p.cli("commit", "prod").code == 0
    with small_tmpfs(tmp_path / "small", "2m") as small:
        laptop = other_home(p, small / "home")
        assert laptop.cli("status").code == 0  # creates nothing but is fine on a tmpfs
        (small / "home" / ".sst-vault").mkdir(parents=True, exist_ok=True)
        fill(small, 64 * 1024)
        before = laptop.snapshot_home()
        line = assert_refused(laptop.cli("prepare", "prod"), 1, "No space left", "free space")
        assert str(laptop.home / "state") in line
        assert laptop.snapshot_home() == before
        assert temp_files(laptop.home) == []
        assert journals(laptop) == []
        (small / "filler").unlink()
        assert laptop.cli("prepare", "prod").code == 0


def test_prepare_of_a_large_state_on_a_full_disk(vault_project: VaultProject, tmp_path: Path):
    # Past WRITEBACK_STEP a thread is sending the file to disk when the disk fills: the same one
    # line, no thread left waiting, nothing half-written.
    p = vault_project
    deploy(p, "prod", "big", size=40_000_000)
    assert p.cli("commit", "prod").code == 0
    with small_tmpfs(tmp_path / "small", "64m") as small:
        laptop = other_home(p, small / "home")
        (small / "home" / ".sst-vault").mkdir(parents=True, exist_ok=True)
        fill(small, 24 * 1024 * 1024)
        before = laptop.snapshot_home()
        line = assert_refused(laptop.cli("prepare", "prod"), 1, "No space left", "free space")
        assert str(laptop.home / "state") in line
        assert laptop.snapshot_home() == before
        assert temp_files(laptop.home) == []
        (small / "filler").unlink()
        assert laptop.cli("prepare", "prod").code == 0
        state = laptop.home / "state" / "app" / p.app / "prod.json"
        assert state.read_bytes() == (p.home / "state" / "app" / p.app / "prod.json").read_bytes()


def test_commit_on_a_full_disk(vault_project: VaultProject, tmp_path: Path):
    p = vault_project
    deploy(p, "prod", "v1")
    assert p.cli("commit", "prod").code == 0
    with small_tmpfs(tmp_path / "small", "8m") as small:
        import shutil

        root = small / "repo"
        shutil.copytree(p.root, root, symlinks=True)
        q = VaultProject(root, p.home, p.env, p.key)
        deploy(q, "prod", "v2", size=1_500_000, seed=3)
        before_repo, before_head = q.snapshot_repo(), head(q)
        fill(small, 96 * 1024)
        line = assert_refused(q.cli("commit", "prod"), 1, "No space left", "free space")
        assert "infra/state" in line or ".git" in line, line
        assert q.snapshot_repo() == before_repo
        assert head(q) == before_head
        assert temp_files(q.root, q.home) == []
        (small / "filler").unlink()
        assert q.cli("commit", "prod").code == 0


def test_read_only_sst_home_is_one_line(vault_project: VaultProject, tmp_path: Path):
    p = vault_project
    deploy(p, "prod", "v1")
    assert p.cli("commit", "prod").code == 0
    with small_tmpfs(tmp_path / "ro", "1m") as ro:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        laptop = other_home(p, ro)
        line = assert_refused(laptop.cli("prepare", "prod"), 1, "Read-only file system")
        assert str(ro) in line and "read-write" in line


# --- platforms and environment ---------------------------------------------------------------


def test_a_platform_without_openat_gets_the_wsl_message(vault_project: VaultProject):
    """Windows has no O_DIRECTORY/O_NOFOLLOW and no dir_fd: the message, not AttributeError."""
    p = vault_project
    code = (
        "import os\n"
        "for name in ('O_DIRECTORY', 'O_NOFOLLOW', 'O_NONBLOCK'):\n"
        "    delattr(os, name)\n"
        "os.supports_dir_fd.discard(os.open)\n"
        "from vault.cli.main import main\n"
        f"main(['--sst-home', {str(p.home)!r}, 'prepare', 'prod'])\n"
    )
    deploy(p, "prod")
    assert p.cli("commit", "prod").code == 0
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=p.root, env=p.env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("Error: ") and "WSL" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_doctor_with_a_misspelled_keyring_backend(vault_project: VaultProject):
    p = vault_project
    env = {**p.env, "PYTHON_KEYRING_BACKEND": "keyring.backends.fial.Keyring"}
    result = p.cli("doctor", env=env)
    assert "Traceback" not in result.output
    line = next(ln for ln in result.out.splitlines() if ln.split()[1:2] == ["keyring:"])
    assert "PYTHON_KEYRING_BACKEND" in line and "fial" in line, line
