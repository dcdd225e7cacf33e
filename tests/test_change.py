"""change.Change: every command that writes the repository takes the same locks and gives the
same guarantees (all files swapped in or none, across a failed commit and across kill -9).

The locks are held by a real second process (flock, as another sst-vault would hold them); the
kills are real SIGKILLs at the test hook's pause points; the failed commits are real git
commits that git refuses (a signing program that fails).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import VaultProject, new_key
from helpers import (
    assert_refused,
    before,
    committed_prod,  # noqa: F401 (a fixture)
    copied_vault_project,  # noqa: F401 (a fixture)
    deploy,
    head,
    holding_flock,
    key_id,
    kill_at,
    public_of,
    temp_files,
)

KINDS = ("passphrase", "app", "secret")


def member(project: VaultProject, home: Path) -> VaultProject:
    key = new_key(project.env)
    return VaultProject(project.root, home, dict(project.env, SST_VAULT_KEY=key), key)


@pytest.fixture
def two_commits(committed: VaultProject, tmp_path: Path):
    """prod committed twice (v1, v2), a second recipient, and a plaintext file to migrate."""
    p = committed
    first = head(p)
    deploy(p, "prod", "v2", secrets={"A": "2"})
    assert p.cli("commit", "prod").code == 0
    bob = public_of(member(p, tmp_path / "bob-home"))
    assert p.cli("recipients", "add", "bob", bob).code == 0
    carol = public_of(member(p, tmp_path / "carol-home"))
    plain = p.root / "infra" / "state" / "app" / "dev.json"
    plain.write_text(json.dumps({"latest": {"resources": []}}))
    p.git("add", "-f", str(plain))
    p.git("commit", "-q", "-m", "the plaintext recipe's dev state")
    deploy(p, "prod", "v3", secrets={"A": "3"})  # uncommitted in the home, for `commit`
    return p, first, carol


COMMANDS = {
    "commit": lambda first, carol: ("commit", "prod"),
    "prepare": lambda first, carol: ("prepare", "prod", "--force"),
    "rollback": lambda first, carol: ("rollback", "prod", "--to", first),
    "rotate": lambda first, carol: ("rotate",),
    "recipients add": lambda first, carol: ("recipients", "add", "carol", carol),
    "recipients remove": lambda first, carol: ("recipients", "remove", "bob"),
    "migrate": lambda first, carol: ("migrate",),
}


@pytest.mark.parametrize("lock", ["the SST home", "the repository"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_change_honours_both_local_locks(two_commits, command: str, lock: str) -> None:
    """Rollback and recipients add used to skip the home's lock, prepare the repository's: each
    now waits for a holder (here: up to 0.3 s) and then refuses, having changed nothing."""
    p, first, carol = two_commits
    lock_file = (
        p.home / ".sst-vault" / "lock"
        if lock == "the SST home"
        else p.root / ".git" / "sst-vault.lock"
    )
    args = COMMANDS[command](first, carol)
    env = {**p.env, "SST_VAULT_LOCAL_LOCK_WAIT": "0.3"}
    was = before(p)
    with holding_flock(lock_file):
        result = p.cli(*args, env=env)
    assert_refused(result, 1, f"another sst-vault process is using {lock}", project=p, was=was)
    assert temp_files(p.root, p.home) == []
    # Once the holder is gone, the same command goes through.
    done = p.cli(*args)
    assert done.code == 0, done.output


def prepared_from_scratch(p: VaultProject, home: Path, *stages: str) -> dict[str, bytes]:
    """The SST files a fresh machine gets from the work tree as it is now."""
    fresh = VaultProject(p.root, home, p.env, p.key)
    result = fresh.cli("prepare", *stages)
    assert result.code == 0, result.output
    return fresh.snapshot_home()


@pytest.mark.parametrize("step", ["txn-journaled", "txn-replaced-1", "txn-replaced-4"])
def test_rotation_killed_during_its_swap_is_rolled_forward_whole(
    committed: VaultProject, tmp_path: Path, step: str
) -> None:
    """Vault files and the data key that opens them are swapped as one journaled change: a
    kill -9 between two renames never leaves files the work tree's data key cannot open."""
    p = committed
    deploy(p, "dev", "d1")
    assert p.cli("commit", "dev").code == 0
    files = p.snapshot_home()
    old_id, commit = key_id(p), head(p)
    kill_at(p, step, "rotate")
    assert head(p) == commit
    doctor = p.cli("doctor")  # reports the unfinished change, and leaves it to the next one
    assert "an unfinished change of the vault files" in doctor.out, doctor.out
    assert "Traceback" not in doctor.output
    status = p.cli("status")  # the next command rolls the swap forward, under the repo lock
    assert status.code == 0, status.output
    assert not list((p.root / ".git" / "sst-vault-journal").glob("txn-*"))
    assert temp_files(p.root) == []
    assert key_id(p) != old_id  # the new data key, with every file re-sealed under it
    assert prepared_from_scratch(p, tmp_path / "fresh-home", "prod", "dev") == files
    # What was swapped in is committed by the next commit (sst-vault's own files go along).
    assert p.cli("commit", "--all").code == 0
    assert p.git("status", "--porcelain") == ""


def test_failed_commit_puts_migrate_back(vault_project: VaultProject) -> None:
    """migrate's sealed files, ignore blocks and plaintext removal are one change: when git
    refuses the commit, the plaintext is back where it was, tracked as before."""
    p = vault_project
    plain = p.root / "infra" / "state" / "app" / "dev.json"
    plain.parent.mkdir(parents=True, exist_ok=True)
    plain.write_text(json.dumps({"latest": {"resources": []}}))
    plain.chmod(0o640)
    p.git("add", "-f", str(plain))
    p.git("commit", "-q", "-m", "the plaintext recipe's dev state")
    attributes = (p.root / ".gitattributes").read_bytes()
    was = before(p)
    p.git("config", "commit.gpgsign", "true")
    p.git("config", "gpg.program", "false")
    assert_refused(p.cli("migrate"), 1, "commit", project=p, was=was)
    assert (plain.stat().st_mode & 0o777) == 0o640
    assert (p.root / ".gitattributes").read_bytes() == attributes
    assert temp_files(p.root) == []
    p.git("config", "commit.gpgsign", "false")
    result = p.cli("migrate")
    assert result.code == 0, result.output
    assert not plain.exists()
    assert "infra/state/app/dev.json" not in p.git("ls-files").splitlines()
    assert p.git("status", "--porcelain") == ""


def test_nothing_changed_means_no_commit_and_no_rewrite(committed: VaultProject) -> None:
    """The same for every change: nothing to do, nothing written, no commit."""
    p = committed
    repo, commit = p.snapshot_repo(), head(p)
    mtimes = {f: f.stat().st_mtime_ns for f in (p.root / "infra" / "state").rglob("*.vault")}
    assert p.cli("commit", "prod").code == 0
    assert p.cli("rollback", "prod", "--to", "HEAD").code == 0
    assert head(p) == commit and p.snapshot_repo() == repo
    assert {f: f.stat().st_mtime_ns for f in mtimes} == mtimes
