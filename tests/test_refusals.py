"""Refusals through the real CLI: exit code, one `Error:` line with what to do, nothing lost.

Every test snapshots the SST home and the repo before the refused command and checks that
nothing changed, no commit was made and no temporary file was left behind.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sstfake
from conftest import SST_CONFIG, VaultProject, git, run_cli
from helpers import (
    assert_refused,
    commit_count,
    committed_prod,  # noqa: F401 (a fixture)
    copied_vault_project,  # noqa: F401 (a fixture)
    deploy,
    fresh_project,
    head,
    mode,
    other_home,
    temp_files,
    tree_state,
)


@contextlib.contextmanager
def unchanged(p: VaultProject, *extra: Path) -> Iterator[None]:
    """Nothing in the SST home, the vault or the git history changes inside the block."""
    home, repo, commit = p.snapshot_home(), p.snapshot_repo(), head(p)
    records = bookkeeping(p)
    porcelain = p.git("status", "--porcelain")
    yield
    assert p.snapshot_home() == home
    assert p.snapshot_repo() == repo
    assert head(p) == commit
    assert p.git("status", "--porcelain") == porcelain
    assert bookkeeping(p) == records
    assert temp_files(p.root, p.home, *extra) == []


def bookkeeping(p: VaultProject) -> dict:
    """sst-vault's files in the SST home but its flock and its trust memory: a refused command
    may still have verified the key record, and remembering that is not a change of state."""
    found = tree_state(p.home / ".sst-vault") if (p.home / ".sst-vault").exists() else {}
    return {k: v for k, v in found.items() if k != "lock" and not k.startswith("trust/")}


def test_prepare_unknown_stage_is_a_usage_error(committed: VaultProject):
    p = committed
    with unchanged(p):
        line = assert_refused(p.cli("prepare", "prdo"), 2, "prdo", "known stages: prod")
    assert "no vault files" in line
    # Together with a good stage, nothing is written for the good one either.
    shutil.rmtree(p.home / "state" / "app")
    with unchanged(p):
        assert_refused(p.cli("prepare", "prod", "prdo"), 2, "prdo")


INVALID_STAGES = ["a/b", "..", ".hidden", "x y", "", "s" * 300, "a\\b", "_x", "../prod", "prod\n"]


def test_invalid_stage_names(committed: VaultProject):
    p = committed
    with unchanged(p):
        for stage in INVALID_STAGES:
            assert_refused(p.cli("prepare", stage), 2, "invalid stage name")
        for stage in ("a/b", "..", ""):
            for command in ("commit", "status"):
                assert_refused(p.cli(command, stage), 2, "invalid stage name")
        # A bad name among good ones: nothing is done for the good ones either.
        assert_refused(p.cli("commit", "prod", "a/b"), 2, "invalid stage name")


def test_stage_names_and_all_together(committed: VaultProject):
    with unchanged(committed):
        assert_refused(committed.cli("prepare", "prod", "--all"), 2, "--all", hint=False)
        assert_refused(committed.cli("commit"), 2, "--all")


def test_missing_config(tmp_path: Path, env: dict[str, str]):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    home = tmp_path / "sst-home"
    sstfake.write_state(home, "demo-app", "prod")
    before = tree_state(tmp_path)
    for command in (["prepare", "prod"], ["commit", "prod"], ["status"]):
        result = run_cli("--sst-home", str(home), *command, cwd=outside, env=env)
        assert_refused(result, 2, "sst-vault.toml", "sst-vault init")
        result = run_cli("--project", str(outside), *command, cwd=tmp_path, env=env)
        assert_refused(result, 2, "sst-vault.toml")
    assert tree_state(tmp_path) == before


def test_init_outside_a_git_repository(tmp_path: Path, env: dict[str, str]):
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "sst.config.ts").write_text(SST_CONFIG)
    env = {**env, "SST_VAULT_KEY": run_cli("key", "generate", cwd=tmp_path, env=env).out.strip()}
    result = run_cli("init", "--no-keyring", cwd=folder, env=env)
    assert_refused(result, 2, "not inside a git repository", "git init")
    assert sorted(p.name for p in folder.iterdir()) == ["sst.config.ts"]


def test_init_twice(committed: VaultProject):
    p = committed
    files = {
        name: (p.root / name).read_bytes()
        for name in ("sst-vault.toml", ".gitattributes", ".gitignore", "infra/state/data-key.age")
    }
    with unchanged(p):
        assert_refused(p.cli("init", "--no-keyring"), 2, "already exists")
        assert_refused(p.cli("init", "--no-keyring", "--backend", "fernet"), 2, "already exists")
    assert {name: (p.root / name).read_bytes() for name in files} == files


def test_prepare_refuses_uncommitted_home_changes_and_force_keeps_a_backup(
    committed: VaultProject,
):
    p = committed
    repo_app = p.state_file("app", "prod").read_bytes()
    deploy(p, "prod", "local-change-never-committed")
    local = p.state_file("app", "prod").read_bytes()
    with unchanged(p):
        assert_refused(p.cli("prepare", "prod"), 1, "never committed", "--force", "commit prod")

    result = p.cli("prepare", "prod", "--force")
    assert result.code == 0, result.output
    assert p.state_file("app", "prod").read_bytes() == repo_app
    backups = list((p.home / ".sst-vault" / "backup").rglob("*"))
    backup_files = [b for b in backups if b.is_file()]
    assert len(backup_files) == 1, backups
    assert backup_files[0].read_bytes() == local
    assert mode(backup_files[0]) == 0o600  # it is plaintext state
    assert str(backup_files[0]) in result.err
    assert temp_files(p.root, p.home) == []


def test_prepare_refuses_a_rollback_unless_forced(committed: VaultProject):
    p = committed
    v1 = p.state_file("app", "prod").read_bytes()
    deploy(p, "prod", "v2")
    assert p.cli("commit", "prod").code == 0
    v2 = p.state_file("app", "prod").read_bytes()
    p.git("checkout", "HEAD~1", "--", "infra/state")
    with unchanged(p):
        assert_refused(p.cli("prepare", "prod"), 1, "serial 1", "serial 2", "--force")
    assert p.state_file("app", "prod").read_bytes() == v2
    result = p.cli("prepare", "prod", "--force")
    assert result.code == 0, result.output
    assert p.state_file("app", "prod").read_bytes() == v1


@pytest.mark.parametrize("meets_the_replay", ["prepare", "commit"])
def test_a_replayed_older_copy_of_the_home_content_does_not_reopen_a_rollback(
    committed: VaultProject, meets_the_replay: str
):
    # `rollback` restores serial 1's exact bytes as serial 3, so serial 1 and this home hold
    # the same content. A writer (git only, no key) pushes serial 1's files back: the member's
    # prepare or commit finds nothing to do. It must not lower the serial this home remembers
    # (3), or the writer's next push, serial 2's files (the state the team rolled back away
    # from), passes the rollback check and is written into the home.
    p = committed
    v1 = head(p)
    deploy(p, "prod", "v2")
    assert p.cli("commit", "prod").code == 0
    v2 = head(p)
    assert p.cli("rollback", "prod", "--to", v1, "--prepare").code == 0
    home_at_v1 = p.snapshot_home()
    p.git("checkout", v1, "--", "infra/state")
    p.git("commit", "-q", "-m", "mallory: replay serial 1")
    p.cli(meets_the_replay, "prod")  # nothing to write: same content as the home
    assert p.snapshot_home() == home_at_v1
    p.git("checkout", v2, "--", "infra/state")
    p.git("commit", "-q", "-m", "mallory: replay serial 2")
    with unchanged(p):
        assert_refused(p.cli("prepare", "prod"), 1, "serial 2", "serial 3", "--force")
    assert p.snapshot_home() == home_at_v1


def test_commit_refuses_corrupt_state(committed: VaultProject):
    p = committed
    # A new passphrase and secret come first in the same commit: none of it may land.
    sstfake.write_secrets(p.home, p.app, "prod", {"A": "2"})
    for bad in (b'{"version": 3, "checkpoint": ', b"", b"not json at all\n"):
        p.state_file("app", "prod").write_bytes(bad)
        with unchanged(p):
            assert_refused(p.cli("commit", "prod"), 1, "not valid JSON", "redeploy")
    assert commit_count(p) == 2
    # A corrupt stage among good ones: the good one is not committed either.
    deploy(p, "prod", "good")
    deploy(p, "dev")
    p.state_file("app", "dev").write_bytes(b"{]")
    with unchanged(p):
        assert_refused(p.cli("commit", "prod", "dev"), 1, "dev.json", "not valid JSON")
    p.state_file("app", "dev").write_bytes(b"{}\n")
    p.state_file("passphrase", "dev").write_bytes(b"\n")
    with unchanged(p):
        assert_refused(p.cli("commit", "dev"), 1, "empty SST passphrase")


def test_commit_refuses_when_the_repo_is_newer_than_this_home(
    committed: VaultProject, tmp_path: Path
):
    p = committed
    laptop = other_home(p, tmp_path / "laptop-home")
    assert laptop.cli("prepare", "prod").code == 0
    deploy(p, "prod", "v2 from ci")
    assert p.cli("commit", "prod").code == 0  # serial 2
    deploy(laptop, "prod", "v2 from laptop")
    with unchanged(laptop):
        assert_refused(laptop.cli("commit", "prod"), 1, "serial 2", "serial 1", "--force")
    # A home that never prepared this stage cannot overwrite it either.
    stranger = other_home(p, tmp_path / "stranger-home")
    deploy(stranger, "prod", "unrelated")
    with unchanged(stranger):
        assert_refused(stranger.cli("commit", "prod"), 1, "never prepared here")
        # Nor may the repo's state overwrite it: it was never committed anywhere.
        assert_refused(stranger.cli("prepare", "prod"), 1, "never committed", "--force")

    result = laptop.cli("commit", "prod", "--force")
    assert result.code == 0, result.output
    fresh = other_home(p, tmp_path / "fresh-home")
    assert fresh.cli("prepare", "prod").code == 0
    assert (
        fresh.state_file("app", "prod").read_bytes()
        == laptop.state_file("app", "prod").read_bytes()
    )


def test_commit_without_state_in_the_home(committed: VaultProject, tmp_path: Path):
    p = committed
    with unchanged(p):
        assert_refused(p.cli("commit", "staging"), 2, "no SST state for staging")
    empty = other_home(p, tmp_path / "empty-home")
    with unchanged(empty):
        assert_refused(empty.cli("commit", "prod"), 2, "no SST state")
        assert_refused(empty.cli("commit", "--all"), 2, "no stages found")


def test_prepare_all_with_an_empty_vault(vault_project: VaultProject):
    with unchanged(vault_project):
        assert_refused(vault_project.cli("prepare", "--all"), 2, "no stages found")


def test_project_option_pointing_at_a_plain_git_repo(tmp_path: Path, env: dict[str, str]):
    plain = tmp_path / "plain"
    plain.mkdir()
    git("init", "-q", cwd=plain, env=env)
    result = run_cli("--project", str(plain), "status", cwd=tmp_path, env=env)
    assert_refused(result, 2, "sst-vault.toml", "sst-vault init")


def test_refusals_work_for_fernet_too(tmp_path: Path):
    p = fresh_project(tmp_path, "fernet")
    deploy(p, "prod")
    assert p.cli("commit", "prod").code == 0
    deploy(p, "prod", "uncommitted")
    with unchanged(p):
        assert_refused(p.cli("prepare", "prod"), 1, "never committed")
        assert_refused(p.cli("prepare", "prdo"), 2, "known stages: prod")
