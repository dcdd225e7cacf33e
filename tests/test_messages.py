"""Messages a newcomer meets: each names the cause and one next step (issue 11's list)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import VaultProject, base_env, git, new_app_repo, new_key, run_cli
from helpers import add_remote, assert_refused, deploy, head, other_home


def test_status_verify_with_a_key_that_is_not_a_recipient_says_so(
    vault_project: VaultProject,
) -> None:
    deploy(vault_project, "prod", "m1")
    assert vault_project.cli("commit", "prod").code == 0
    stranger = {**vault_project.env, "SST_VAULT_KEY": new_key(vault_project.env)}
    result = vault_project.cli("status", "--verify", env=stranger)
    line = assert_refused(result, 1, "not a recipient of the vault", "recipients add")
    assert "damaged" not in line and "restore" not in line
    # prepare says the same thing.
    assert "not a recipient of the vault" in vault_project.cli("prepare", "prod", env=stranger).err


def test_a_diverged_stage_gets_one_recommendation_from_prepare_and_commit(
    vault_project: VaultProject, tmp_path: Path
) -> None:
    deploy(vault_project, "prod", "mine-1")
    assert vault_project.cli("commit", "prod").code == 0
    # Someone else (another SST home on the same repo) deploys prod and commits.
    other = other_home(vault_project, tmp_path / "other-home")
    assert other.cli("prepare", "prod").code == 0
    deploy(other, "prod", "theirs-2")
    assert other.cli("commit", "prod").code == 0
    # Meanwhile this home deployed too, without committing: diverged.
    deploy(vault_project, "prod", "mine-2")
    assert "diverged" in vault_project.cli("status", "prod").out
    advice = "keep the repo's version: run `sst-vault prepare prod --force`"
    prepared = assert_refused(vault_project.cli("prepare", "prod"), 1, "has diverged", advice)
    committed = assert_refused(vault_project.cli("commit", "prod"), 1, "has diverged", advice)
    for line in (prepared, committed):
        assert "sst-vault commit" not in line  # no pointing back at the other command
    # Following the advice works, and keeps a backup of this home's version.
    fixed = vault_project.cli("prepare", "prod", "--force")
    assert fixed.code == 0, fixed.output
    assert "in sync" in vault_project.cli("status", "prod").out


def test_init_without_sst_config_ts_says_so(tmp_path: Path, env: dict[str, str]) -> None:
    root = tmp_path / "not-an-app"
    root.mkdir()
    git("init", "-q", cwd=root, env=env)
    env = {**env, "SST_VAULT_KEY": new_key(env)}
    result = run_cli("init", "--no-keyring", cwd=root, env=env)
    assert_refused(result, 2, f"no sst.config.ts in {root}", "next to sst.config.ts")
    assert not (root / "sst-vault.toml").exists()
    # An sst.config.ts without a name is the other message.
    (root / "sst.config.ts").write_text("export default $config({ app() { return {}; } });\n")
    assert_refused(
        run_cli("init", "--no-keyring", cwd=root, env=env),
        2,
        "no app name found in sst.config.ts",
        "--app NAME",
    )


def test_init_names_an_environment_key_after_the_developer_outside_ci(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    for name in ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "TF_BUILD", "BUILDKITE", "CIRCLECI"):
        env.pop(name, None)
    env.pop("JENKINS_URL", None)
    env.update(USER="alice", LOGNAME="alice", SST_VAULT_KEY=new_key(env))
    dev = new_app_repo(tmp_path / "dev", env)
    result = run_cli("init", "--no-keyring", cwd=dev, env=env)
    assert result.code == 0, result.output
    assert "Recipients: alice (this key is 'alice'; pick the name with --name)" in result.err
    assert list(record_recipients(dev)) == ["alice"]
    # In CI the same key source is CI's key.
    ci = new_app_repo(tmp_path / "ci", env)
    result = run_cli("init", "--no-keyring", cwd=ci, env={**env, "CI": "true"})
    assert result.code == 0, result.output
    assert list(record_recipients(ci)) == ["ci"]


def record_recipients(root: Path) -> dict[str, str]:
    """The recipients of the signed key record's newest entry."""
    lines = (root / "infra/state/key-record.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["entry"]["recipients"]


def test_rollback_subject_names_the_commit_once(vault_project: VaultProject) -> None:
    deploy(vault_project, "prod", "v1")
    assert vault_project.cli("commit", "prod").code == 0
    first = head(vault_project)
    deploy(vault_project, "prod", "v2")
    assert vault_project.cli("commit", "prod").code == 0
    result = vault_project.cli("rollback", "prod", "--to", first[:8])
    assert result.code == 0, result.output
    subject = vault_project.git("log", "-1", "--format=%s").strip()
    assert subject == f"sst-vault: roll back demo-app/prod to {first[:12]}"
    # A symbolic revision is kept next to the commit it meant.
    result = vault_project.cli("rollback", "prod", "--to", "HEAD~1")
    assert result.code == 0, result.output
    subject = vault_project.git("log", "-1", "--format=%s").strip()
    assert subject.startswith("sst-vault: roll back demo-app/prod to HEAD~1 (")


def test_commit_push_with_nothing_new_says_what_the_push_did(
    vault_project: VaultProject, tmp_path: Path
) -> None:
    add_remote(vault_project, tmp_path)
    deploy(vault_project, "prod", "v1")
    first = vault_project.cli("commit", "prod")  # committed, not pushed
    assert first.code == 0, first.output
    again = vault_project.cli("commit", "prod", "--push")
    assert again.code == 0, again.output
    assert "(pushed)" not in again.err
    assert "Nothing changed; no commit made." in again.err
    assert "Pushed 1 earlier commit(s) the remote did not have." in again.err
    third = vault_project.cli("commit", "prod", "--push")
    assert third.code == 0, third.output
    assert "Nothing to push: the remote already has every commit." in third.err
