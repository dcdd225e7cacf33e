"""Merges and rebases of vault files, and what `status` promises without --verify.

Two real clones of one bare remote deploy the same stage from the same serial; the second
`git pull` stops on the vault files. Nothing may pick a side silently: `status` says conflict,
`commit`, `prepare` and `run` refuse naming `sst-vault resolve`, which keeps one side whole at
a serial above both.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sstfake
from conftest import VaultProject
from helpers import (
    add_remote,
    assert_refused,
    before,
    clone,
    deploy,
    fresh_project,
    head,
    holding_flock,
    kill_at,
    other_home,
    refusing_fork,
    temp_files,
    vault_header,
)

KINDS = ("passphrase", "app", "secret")


def rows(p: VaultProject, *stages: str) -> dict[tuple[str, str], dict]:
    result = p.cli("status", "--json", *stages)
    assert result.code == 0, result.output
    return {(r["stage"], r["kind"]): r for r in json.loads(result.out)}


def states(p: VaultProject, *stages: str) -> dict[tuple[str, str], str]:
    return {k: r["state"] for k, r in rows(p, *stages).items()}


@pytest.fixture
def conflicted(tmp_path: Path):
    """a and b both deploy prod from serial 1; a pushes first; b's `git pull` conflicts."""
    a = fresh_project(tmp_path, name="a")
    deploy(a, "prod", "base", secrets={"K": "base"})
    deploy(a, "dev", "dev-base")
    assert a.cli("commit", "prod", "dev").code == 0
    remote = add_remote(a, tmp_path)
    b = clone(a, remote, tmp_path, "b")
    assert b.cli("prepare", "prod", "dev").code == 0
    deploy(a, "prod", "from-a", secrets={"K": "a"})
    assert a.cli("commit", "prod", "--push").code == 0
    deploy(b, "prod", "from-b", secrets={"K": "b"})
    assert b.cli("commit", "prod").code == 0
    pulled = git_result(b, "pull", "--no-rebase", "--no-edit", "origin", "main")
    assert pulled.returncode != 0 and "CONFLICT" in pulled.stdout, pulled
    return a, b


def git_result(p: VaultProject, *args: str) -> subprocess.CompletedProcess[str]:
    """A git command that may fail (a merge or rebase that stops on a conflict)."""
    return subprocess.run(["git", *args], cwd=p.root, env=p.env, capture_output=True, text=True)


def test_a_conflicted_merge_is_never_resolved_silently(conflicted, tmp_path: Path):
    _a, b = conflicted
    s = states(b)
    assert s[("prod", "app")] == "conflict" and s[("prod", "secret")] == "conflict", s
    assert s[("dev", "app")] == "in sync", s
    assert s[("prod", "passphrase")] == "in sync", s  # the same on both sides
    text = b.cli("status", "prod").out
    app_line = next(ln for ln in text.splitlines() if " app " in ln)
    assert "conflict" in app_line and "in sync" not in app_line

    home, repo = b.snapshot_home(), b.snapshot_repo()
    for args in (("commit", "prod"), ("prepare", "prod"), ("commit", "--all")):
        assert_refused(b.cli(*args), 1, "merge conflict", "sst-vault resolve prod --theirs")
    marker = tmp_path / "deployed"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    result = b.cli("run", "--stage", "prod", "--no-lock", "--no-push", "--", *command)
    assert_refused(result, 1, "merge conflict", "sst-vault resolve prod")
    assert not marker.exists()
    assert b.snapshot_home() == home and b.snapshot_repo() == repo
    # Another stage is not blocked by prod's conflict.
    assert b.cli("prepare", "dev").code == 0


def test_a_conflict_check_whose_git_cannot_start_refuses_and_keeps_the_conflict(
    conflicted, tmp_path: Path
) -> None:
    """The `git status` that finds unmerged vault files cannot start (fork: EAGAIN): the
    command stops with the limit's advice. Taking "no answer" for "no conflict" let `commit`
    seal over the conflict and unstage it (the merge then concluded with one side silently)
    and let `prepare` write one side into the SST home."""
    _, b = conflicted
    env = refusing_fork(b.env, tmp_path / "refuse-git-status", "git", "status")
    deploy(b, "prod", "after-the-pull", secrets={"K": "b2"})
    unmerged = b.git("diff", "--name-only", "--diff-filter=U")
    assert "app/prod.json.vault" in unmerged
    for args in (("commit", "prod"), ("prepare", "prod", "--force")):
        was = before(b)
        result = b.cli(*args, env=env)
        assert_refused(result, 1, "pids.max", "ulimit -u", out=None, project=b, was=was)
        assert b.git("diff", "--name-only", "--diff-filter=U") == unmerged
    assert_refused(b.cli("commit", "prod"), 1, "merge conflict", "sst-vault resolve prod")


@pytest.mark.parametrize("side", ["theirs", "ours"])
def test_resolve_keeps_one_side_whole_at_a_newer_serial(conflicted, tmp_path: Path, side: str):
    a, b = conflicted
    a_home = {k: a.state_file(k, "prod").read_bytes() for k in KINDS}
    b_home = {k: b.state_file(k, "prod").read_bytes() for k in KINDS}
    result = b.cli("resolve", "prod", f"--{side}")
    assert result.code == 0, result.output
    assert "git commit" in result.err
    assert b.git("diff", "--name-only", "--diff-filter=U") == ""
    b.git("commit", "-q", "--no-edit")
    assert temp_files(b.root, b.home) == []

    after = rows(b, "prod")
    assert after[("prod", "app")]["repo_serial"] == 3  # both sides had serial 2
    # The kept side, whole, for a fresh machine; no kind from the other side.
    fresh = other_home(b, tmp_path / "fresh")
    assert fresh.cli("prepare", "prod").code == 0
    kept = a_home if side == "theirs" else b_home
    assert {k: fresh.state_file(k, "prod").read_bytes() for k in KINDS} == kept
    kept_secrets = {"K": "a" if side == "theirs" else "b"}
    assert sstfake.read_secrets(fresh.home, b.app, "prod") == kept_secrets

    s = states(b, "prod")
    assert s[("prod", "app")] == s[("prod", "secret")] == "repo ahead", s
    # b's own deploy is in git (its side of the merge), so prepare may replace it.
    assert b.cli("prepare", "prod").code == 0
    assert {k: b.state_file(k, "prod").read_bytes() for k in KINDS} == kept
    assert set(states(b, "prod").values()) == {"in sync"}
    # a, which prepared serial 2, takes serial 3 without --force once b pushes.
    b.git("push", "-q", "origin", "main")
    a.git("pull", "-q", "--no-rebase", "origin", "main")
    assert a.cli("prepare", "prod").code == 0
    assert {k: a.state_file(k, "prod").read_bytes() for k in KINDS} == kept


def test_resolve_waits_for_the_repository_lock_and_changes_nothing_meanwhile(conflicted):
    _, b = conflicted
    was = before(b)
    with holding_flock(b.root / ".git" / "sst-vault.lock"):
        result = b.cli(
            "resolve", "prod", "--ours", env={**b.env, "SST_VAULT_LOCAL_LOCK_WAIT": "0.3"}
        )
    assert_refused(
        result, 1, "another sst-vault process is using the repository", project=b, was=was
    )
    assert b.cli("resolve", "prod", "--ours").code == 0


def test_resolve_killed_during_its_swap_is_rolled_forward_whole(conflicted, tmp_path: Path):
    """The kept side's three files are swapped in as one journaled change: a kill -9 between two
    renames never leaves the stage mixed from both sides, and running resolve again finishes."""
    a, b = conflicted
    a_home = {k: a.state_file(k, "prod").read_bytes() for k in KINDS}
    kill_at(b, "txn-replaced-1", "resolve", "prod", "--theirs")
    assert b.cli("status").code == 0  # rolls the swap forward, under the repository lock
    assert not list((b.root / ".git" / "sst-vault-journal").glob("txn-*"))
    assert temp_files(b.root, b.home) == []
    # Both conflicted files are the kept side, re-sealed above both sides' serial 2: neither
    # was left behind as the work tree's side of the conflict.
    files = [b.root / "infra" / "state" / k / "prod.json.vault" for k in ("app", "secret")]
    assert [vault_header(f)["serial"] for f in files] == [3, 3]
    result = b.cli("resolve", "prod", "--theirs")
    assert result.code == 0, result.output
    b.git("commit", "-q", "--no-edit")
    fresh = other_home(b, tmp_path / "fresh")
    assert fresh.cli("prepare", "prod").code == 0
    assert {k: fresh.state_file(k, "prod").read_bytes() for k in KINDS} == a_home


def test_resolve_during_a_rebase(conflicted):
    _a, b = conflicted
    b.git("merge", "--abort")
    rebased = git_result(b, "rebase", "origin/main")
    assert rebased.returncode != 0
    assert states(b, "prod")[("prod", "app")] == "conflict"
    result = b.cli("resolve", "prod", "--ours")  # in a rebase: the branch rebased onto (a's)
    assert result.code == 0, result.output
    cont = git_result(b, "-c", "core.editor=true", "rebase", "--continue")
    assert cont.returncode == 0, cont.stderr
    assert rows(b, "prod")[("prod", "app")]["repo_serial"] == 3


def test_resolve_without_a_conflict_and_without_a_side(tmp_path: Path):
    p = fresh_project(tmp_path)
    deploy(p, "prod")
    assert p.cli("commit", "prod").code == 0
    assert_refused(p.cli("resolve", "prod", "--ours"), 2, "no vault file of prod")
    assert p.cli("resolve", "prod").code == 2
    help_text = p.cli("resolve", "--help").out
    assert "Example" in help_text and "--theirs" in help_text


def test_conflict_markers_in_a_vault_file_are_a_conflict(tmp_path: Path):
    """A text merge (attributes missing) leaves markers; after `git add` git forgets the
    conflict, the file does not: status says conflict, commit and prepare refuse."""
    p = fresh_project(tmp_path)
    deploy(p, "prod")
    assert p.cli("commit", "prod").code == 0
    path = p.vault_file("app", "prod")
    path.write_bytes(b"<<<<<<< HEAD\n" + path.read_bytes() + b"=======\n>>>>>>> theirs\n")
    assert states(p, "prod")[("prod", "app")] == "conflict"
    assert_refused(p.cli("prepare", "prod", "--force"), 1, "conflict markers", "resolve prod")
    assert_refused(p.cli("commit", "prod"), 1, "conflict markers", "resolve prod")


# --- what status promises without --verify ----------------------------------------------------


def test_an_edited_serial_is_never_in_sync(tmp_path: Path):
    p = fresh_project(tmp_path)
    deploy(p, "prod", "v1")
    assert p.cli("commit", "prod").code == 0
    deploy(p, "prod", "v2")
    assert p.cli("commit", "prod").code == 0  # app at serial 2
    path = p.vault_file("app", "prod")
    data = path.read_bytes()
    assert data.count(b'"serial":2') == 1
    path.write_bytes(data.replace(b'"serial":2', b'"serial":9'))
    p.git("commit", "-q", "-am", "a writer edits a clear header")
    row = rows(p, "prod")[("prod", "app")]
    assert (row["repo_serial"], row["synced_serial"]) == (9, 2)
    assert row["state"] == "repo ahead"
    assert "in sync" not in next(
        ln for ln in p.cli("status", "prod").out.splitlines() if " app " in ln
    )
    # The header is not authenticated without the body: prepare and --verify say tampered.
    assert_refused(p.cli("prepare", "prod", "--force"), 1, "tampered")
    assert p.cli("status", "--verify", "prod").code == 1
    # A lower serial than synced: "repo behind", not in sync either.
    path.write_bytes(data.replace(b'"serial":2', b'"serial":1'))
    p.git("commit", "-q", "-am", "and again")
    assert rows(p, "prod")[("prod", "app")]["state"] == "repo behind"


def test_status_help_says_what_it_checks(tmp_path: Path):
    p = fresh_project(tmp_path)
    text = p.cli("status", "--help").out
    for word in ("uncommitted", "conflict", "repo behind", "clear header", "sync record"):
        assert word in text, word
    assert head(p)
