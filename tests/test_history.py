"""diff, the git diff driver (textconv), log and rollback, against real git and real crypto."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
import sstfake
from conftest import VaultProject, base_env, git, make_project, new_key, run_cli
from helpers import add_remote, assert_refused, clone, commit_count, deploy, head

from vault.envelope import read_header

SECRET_1 = "tok-first-Zq81"
SECRET_2 = "tok-second-Wm27"


def serial(project: VaultProject, kind: str, stage: str = "prod") -> int:
    with project.vault_file(kind, stage).open("rb") as handle:
        return read_header(handle, "test")[0].serial


def passphrase_text(project: VaultProject, stage: str = "prod") -> str:
    return project.state_file("passphrase", stage).read_text()


def two_versions(project: VaultProject) -> tuple[str, str]:
    """Two committed deploys of prod; returns their commit ids."""
    deploy(project, "prod", "first-marker", secrets={"API_TOKEN": SECRET_1})
    assert project.cli("commit", "prod").code == 0
    first = head(project)
    deploy(
        project,
        "prod",
        "second-marker",
        resources=5,
        secrets={"API_TOKEN": SECRET_2, "NEW_ONE": "value-N3w"},
    )
    assert project.cli("commit", "prod").code == 0
    return first, head(project)


def git_out(project: VaultProject, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=project.root, env=env, capture_output=True, text=True)


def keyless(project: VaultProject) -> dict[str, str]:
    env = dict(project.env)
    env.pop("SST_VAULT_KEY", None)
    return env


# --- the git diff driver ----------------------------------------------------------------------


def test_init_registers_the_driver(vault_project: VaultProject) -> None:
    attributes = (vault_project.root / ".gitattributes").read_text()
    assert "infra/state/**/*.vault -text -merge diff=sst-vault" in attributes
    assert "-diff" not in attributes
    command = vault_project.git("config", "--get", "diff.sst-vault.textconv").strip()
    assert command.endswith("textconv")
    assert vault_project.git("config", "--get", "diff.sst-vault.binary").strip() == "true"
    # Never cached: a textconv cache would be plaintext stored in refs/notes.
    assert "cachetextconv" not in vault_project.git("config", "--list")


def test_git_log_shows_decrypted_json_to_a_key_holder(vault_project: VaultProject) -> None:
    two_versions(vault_project)
    phrase = passphrase_text(vault_project)
    result = git_out(vault_project, "log", "-p", env=vault_project.env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '-            "marker": "first-marker"' in out
    assert '+            "marker": "second-marker"' in out
    assert "# sst-vault app of demo-app/prod, serial 2" in out
    # Secrets: names shown, values masked with a fingerprint that changed with the value.
    assert '"API_TOKEN": "<hidden ' in out and '+  "NEW_ONE": "<hidden ' in out
    assert SECRET_1 not in out and SECRET_2 not in out and "value-N3w" not in out
    assert phrase not in out
    assert "passphrase: (hidden; fingerprint" in out
    # `git diff` of a working-tree change goes through the driver too.
    deploy(vault_project, "prod", "third-marker")
    sealed = vault_project.cli("commit", "prod", "-m", "x")
    assert sealed.code == 0
    shown = git_out(vault_project, "diff", "HEAD~1", "--", "infra/state/app", env=vault_project.env)
    assert '+            "marker": "third-marker"' in shown.stdout


def test_git_diff_without_a_key_fails_safe(vault_project: VaultProject) -> None:
    two_versions(vault_project)
    phrase = passphrase_text(vault_project)
    for env in (
        keyless(vault_project),
        {**keyless(vault_project), "SST_VAULT_KEY": new_key(vault_project.env)},
    ):
        result = git_out(vault_project, "log", "-p", env=env)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "# sst-vault app of demo-app/prod, serial 2, written by " in out
        assert "# sst-vault secret of demo-app/prod, serial 1" in out
        assert "not decrypted" in out
        for plaintext in ("marker", "API_TOKEN", "urn:pulumi", SECRET_1, SECRET_2, phrase):
            assert plaintext not in out, plaintext
        assert "Traceback" not in out + result.stderr


def test_textconv_of_a_foreign_or_broken_file_prints_no_content(
    vault_project: VaultProject, tmp_path: Path
) -> None:
    plain = tmp_path / "plain.json.vault"
    plain.write_text('{"checkpoint": {"stack": "x"}, "secret": "do-not-show"}')
    result = vault_project.cli("textconv", str(plain))
    assert result.code == 0 and "do-not-show" not in result.output
    assert "not a vault file" in result.out
    deploy(vault_project, "prod", "m")
    assert vault_project.cli("commit", "prod").code == 0
    broken = tmp_path / "broken.json.vault"
    data = bytearray(vault_project.vault_file("app", "prod").read_bytes())
    data[-5] ^= 1
    broken.write_bytes(bytes(data))
    result = vault_project.cli("textconv", str(broken))
    assert result.code == 0 and "not decrypted" in result.out and "tampered" in result.out
    assert "urn:pulumi" not in result.output
    missing = vault_project.cli("textconv", str(tmp_path / "nope.vault"))
    assert missing.code == 0 and "cannot read" in missing.out


def test_no_cached_plaintext_and_no_plaintext_in_format_patch(vault_project: VaultProject) -> None:
    two_versions(vault_project)
    patch = git_out(vault_project, "format-patch", "-1", "--stdout", env=vault_project.env)
    assert "second-marker" not in patch.stdout and "GIT binary patch" in patch.stdout
    no_textconv = git_out(vault_project, "diff", "--no-textconv", "HEAD~1", env=vault_project.env)
    assert "Binary files" in no_textconv.stdout
    assert not git_out(
        vault_project, "notes", "--ref=textconv/sst-vault", "list", env=vault_project.env
    ).stdout


def test_setup_git_in_a_fresh_clone(vault_project: VaultProject, tmp_path: Path) -> None:
    two_versions(vault_project)
    remote = add_remote(vault_project, tmp_path)
    other = clone(vault_project, remote, tmp_path, "clone")
    before = git_out(other, "log", "-p", "-1", env=other.env)
    assert before.returncode == 0 and "Binary files" in before.stdout
    assert "second-marker" not in before.stdout
    result = other.cli("setup-git")
    assert result.code == 0, result.output
    after = git_out(other, "log", "-p", "-1", env=other.env)
    assert '+            "marker": "second-marker"' in after.stdout


def test_setup_git_upgrades_an_old_attributes_line(vault_project: VaultProject) -> None:
    path = vault_project.root / ".gitattributes"
    path.write_text(path.read_text().replace("diff=sst-vault", "-diff"))
    vault_project.git("config", "--unset", "diff.sst-vault.textconv")
    result = vault_project.cli("setup-git")
    assert result.code == 0 and "Updated .gitattributes" in result.err
    assert "infra/state/**/*.vault -text -merge diff=sst-vault" in path.read_text()
    assert vault_project.git("config", "--get", "diff.sst-vault.textconv").strip()


# --- diff ---------------------------------------------------------------------------------------


def test_diff_home_against_repo(vault_project: VaultProject) -> None:
    deploy(vault_project, "prod", "committed-marker", secrets={"API_TOKEN": SECRET_1})
    assert vault_project.cli("commit", "prod").code == 0
    phrase = passphrase_text(vault_project)
    same = vault_project.cli("diff", "prod", "--exit-code")
    assert same.code == 0, same.output
    assert "prod app: unchanged" in same.out and "prod passphrase: unchanged" in same.out
    deploy(vault_project, "prod", "home-marker", secrets={"API_TOKEN": SECRET_2})
    result = vault_project.cli("diff", "prod")
    assert result.code == 0, result.output
    out = result.out
    assert '-            "marker": "committed-marker"' in out
    assert '+            "marker": "home-marker"' in out
    assert "--- repo:infra/state/app/prod.json.vault" in out
    assert "prod passphrase: unchanged" in out
    assert '-  "API_TOKEN": "<hidden ' in out and '+  "API_TOKEN": "<hidden ' in out
    assert SECRET_1 not in out and SECRET_2 not in out and phrase not in out
    shown = vault_project.cli("diff", "prod", "--kind", "secret", "--show-secrets")
    assert f'-  "API_TOKEN": "{SECRET_1}"' in shown.out
    assert f'+  "API_TOKEN": "{SECRET_2}"' in shown.out
    assert "marker" not in shown.out and phrase not in shown.out
    assert vault_project.cli("diff", "prod", "--exit-code").code == 1


def test_diff_passphrase_is_never_printed(vault_project: VaultProject) -> None:
    deploy(vault_project, "prod", "m")
    assert vault_project.cli("commit", "prod").code == 0
    old = passphrase_text(vault_project)
    sstfake.write_passphrase(vault_project.home, vault_project.app, "prod")
    new = passphrase_text(vault_project)
    result = vault_project.cli("diff", "prod", "--kind", "passphrase", "--show-secrets")
    assert result.code == 0
    assert result.out == "prod passphrase: changed\n"
    assert old not in result.output and new not in result.output


def test_diff_through_history(vault_project: VaultProject) -> None:
    first, second = two_versions(vault_project)
    by_rev = vault_project.cli("diff", "prod", first)
    assert '+            "marker": "second-marker"' in by_rev.out
    assert f"--- {first}:infra/state/app/prod.json.vault" in by_rev.out
    ranged = vault_project.cli("diff", "prod", f"{second}..{first}", "--kind", "app")
    assert '-            "marker": "second-marker"' in ranged.out
    assert '+            "marker": "first-marker"' in ranged.out
    assert "secret" not in ranged.out
    same = vault_project.cli("diff", "prod", "HEAD..HEAD", "--exit-code")
    assert same.code == 0 and ": changed" not in same.out


def test_diff_refusals(vault_project: VaultProject) -> None:
    two_versions(vault_project)
    assert_refused(vault_project.cli("diff", "prod", "no-such-rev"), 2, "no-such-rev")
    assert_refused(vault_project.cli("diff", "nostage"), 2, "nostage")
    assert_refused(vault_project.cli("diff", "bad_stage!"), 2, "invalid stage")
    assert_refused(vault_project.cli("diff", "prod", "a...b"), 2, "REV1..REV2")
    result = vault_project.cli("diff", "prod", env=keyless(vault_project))
    assert_refused(result, 2, "SST_VAULT_KEY")


# --- log --------------------------------------------------------------------------------------


def test_log_lists_serials_resources_and_kinds(vault_project: VaultProject) -> None:
    first, second = two_versions(vault_project)
    result = vault_project.cli("log", "prod")
    assert result.code == 0, result.output
    lines = result.out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(second[:12]) and lines[1].startswith(first[:12])
    # resources=3 is a stack, a provider and 3 pairs; resources=5 has 2 more pairs.
    assert "serial 2  12 resources  app, secret" in lines[0]
    assert "serial 1  8 resources  passphrase added, app added, secret added" in lines[1]
    assert "Test User" in lines[0]
    data = json.loads(vault_project.cli("log", "prod", "--json").out)
    assert [e["commit"] for e in data] == [second, first]
    assert data[0]["serials"] == {"app": 2, "secret": 2} and data[0]["resources"] == 12
    assert data[1]["changed"] == {"passphrase": "added", "app": "added", "secret": "added"}
    assert len(vault_project.cli("log", "prod", "-n", "1").out.splitlines()) == 1
    # Without a key: serials still come from the clear header, counts are unknown.
    keyless_log = vault_project.cli("log", "prod", env=keyless(vault_project))
    assert keyless_log.code == 0
    assert "serial 2  ? resources" in keyless_log.out
    assert "resource counts not shown" in keyless_log.err
    empty = vault_project.cli("log", "staging")
    assert empty.code == 0 and empty.out == ""


# --- rollback ---------------------------------------------------------------------------------


def test_rollback_restores_exact_bytes_with_fresh_serials(vault_project: VaultProject) -> None:
    deploy(vault_project, "prod", "v1", secrets={"API_TOKEN": SECRET_1})
    assert vault_project.cli("commit", "prod").code == 0
    v1 = head(vault_project)
    v1_home = vault_project.snapshot_home()
    for n in (2, 3):
        deploy(vault_project, "prod", f"v{n}", resources=3 + n, secrets={"API_TOKEN": f"s{n}"})
        assert vault_project.cli("commit", "prod").code == 0
    v3 = head(vault_project)
    assert (serial(vault_project, "app"), serial(vault_project, "secret")) == (3, 3)
    count = commit_count(vault_project)

    result = vault_project.cli("rollback", "prod", "--to", v1[:10])
    assert result.code == 0, result.output
    assert "restored serial 1 as serial 4" in result.err
    assert "sst-vault prepare prod" in result.err
    # A new commit on top; nothing rewritten.
    assert commit_count(vault_project) == count + 1
    assert vault_project.git("rev-parse", "HEAD~1").strip() == v3
    assert serial(vault_project, "app") == 4 and serial(vault_project, "secret") == 4
    assert serial(vault_project, "passphrase") == 1  # unchanged since v1: not rewritten
    assert vault_project.git("status", "--porcelain", "--", "infra").strip() == ""

    prepared = vault_project.cli("prepare", "prod")
    assert prepared.code == 0, prepared.output
    assert vault_project.snapshot_home() == v1_home  # exact bytes, secrets included
    assert sstfake.read_secrets(vault_project.home, vault_project.app, "prod") == {
        "API_TOKEN": SECRET_1
    }
    # Serials keep increasing after the rollback.
    deploy(vault_project, "prod", "v5")
    assert vault_project.cli("commit", "prod").code == 0
    assert serial(vault_project, "app") == 5
    log = vault_project.cli("log", "prod").out.splitlines()
    assert "serial 5" in log[0] and "serial 4" in log[1]


def test_rollback_with_prepare_and_when_nothing_changes(vault_project: VaultProject) -> None:
    deploy(vault_project, "prod", "v1")
    assert vault_project.cli("commit", "prod").code == 0
    v1 = head(vault_project)
    v1_home = vault_project.snapshot_home()
    deploy(vault_project, "prod", "v2")
    assert vault_project.cli("commit", "prod").code == 0
    result = vault_project.cli("rollback", "prod", "--to", v1, "--prepare")
    assert result.code == 0, result.output
    assert vault_project.snapshot_home() == v1_home
    count = commit_count(vault_project)
    again = vault_project.cli("rollback", "prod", "--to", v1)
    assert again.code == 0 and "no commit made" in again.err
    assert commit_count(vault_project) == count


def test_rollback_refusals_change_nothing(vault_project: VaultProject) -> None:
    deploy(vault_project, "prod", "v1")
    assert vault_project.cli("commit", "prod").code == 0
    v1 = head(vault_project)
    deploy(vault_project, "prod", "v2")
    assert vault_project.cli("commit", "prod").code == 0
    before = vault_project.snapshot_repo()
    count = commit_count(vault_project)
    assert_refused(vault_project.cli("rollback", "prod", "--to", "nope"), 2, "nope")
    first_commit = vault_project.git("rev-list", "--max-parents=0", "HEAD").strip()
    assert_refused(vault_project.cli("rollback", "prod", "--to", first_commit), 2, "no vault files")
    assert_refused(
        vault_project.cli("rollback", "prod", "--to", v1, env=keyless(vault_project)),
        2,
        "SST_VAULT_KEY",
    )
    # Uncommitted edits of the stage's vault files are never overwritten.
    vault_project.vault_file("app", "prod").write_bytes(b"local edit")
    edited = vault_project.snapshot_repo()
    assert_refused(vault_project.cli("rollback", "prod", "--to", v1), 1, "uncommitted")
    assert vault_project.snapshot_repo() == edited
    vault_project.vault_file("app", "prod").write_bytes(before["app/prod.json.vault"])
    assert vault_project.snapshot_repo() == before
    assert commit_count(vault_project) == count


def test_rollback_across_a_data_key_rotation_needs_the_old_key(tmp_path: Path) -> None:
    """A fernet vault rotated to a new key: the old version opens only with the old key too."""
    project = make_project(tmp_path, backend="fernet")
    deploy(project, "prod", "v1")
    assert project.cli("commit", "prod").code == 0
    v1 = head(project)
    new = new_key(project.env, "fernet")
    rotated_env = {**project.env, "SST_VAULT_KEY": f"{new}\n{project.key}"}
    deploy(project, "prod", "v2")
    assert project.cli("commit", "prod", env=rotated_env).code == 0
    only_new = {**project.env, "SST_VAULT_KEY": new}
    assert_refused(project.cli("rollback", "prod", "--to", v1, env=only_new), 1, "key rotation")
    result = project.cli("rollback", "prod", "--to", v1, env=rotated_env)
    assert result.code == 0, result.output
    with project.vault_file("app", "prod").open("rb") as handle:
        header = read_header(handle, "x")[0]
    assert header.serial == 3
    # Re-sealed under the newest key: the new key alone opens it.
    assert project.cli("prepare", "prod", env=only_new).code == 0


def test_textconv_finds_a_project_in_a_subfolder(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    top = tmp_path / "mono"
    (top / "apps" / "web").mkdir(parents=True)
    git("init", "-q", cwd=top, env=env)
    (top / "README").write_text("x")
    git("add", "README", cwd=top, env=env)
    git("commit", "-qm", "x", cwd=top, env=env)
    env["SST_VAULT_KEY"] = new_key(env)
    app_dir = top / "apps" / "web"
    (app_dir / "sst.config.ts").write_text(
        'export default $config({ app() { return { name: "web", home: "local" }; } });\n'
    )
    home = tmp_path / "home"
    project = VaultProject(app_dir, home, env, env["SST_VAULT_KEY"], app="web")
    assert project.cli("init", "--no-keyring").code == 0
    sstfake.write_state(home, "web", "prod", marker="mono-marker")
    assert project.cli("commit", "prod").code == 0
    sstfake.write_state(home, "web", "prod", marker="mono-marker-2")
    assert project.cli("commit", "prod").code == 0
    out = subprocess.run(
        ["git", "log", "-p", "-1"], cwd=top, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and '+            "marker": "mono-marker-2"' in out.stdout


@pytest.mark.parametrize("kind", ["app", "secret"])
def test_diff_of_only_one_side(vault_project: VaultProject, kind: str) -> None:
    deploy(vault_project, "prod", "only-home", secrets={"K": "v"})
    result = vault_project.cli("diff", "prod", "--kind", kind)
    assert result.code == 0 and f"prod {kind}: added" in result.out
    assert "--- repo:" in result.out


def test_run_cli_textconv_outside_any_project(tmp_path: Path) -> None:
    """git may run the driver in a repo whose vault it cannot find: still exit 0."""
    env = base_env(tmp_path)
    project = make_project(tmp_path)
    marker = "plain-marker-7d1e"
    deploy(project, "prod", marker)
    assert project.cli("commit", "prod").code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_cli(
        "textconv",
        str(project.vault_file("app", "prod")),
        cwd=elsewhere,
        env={**env, "SST_VAULT_KEY": project.key},
    )
    assert result.code == 0 and "not decrypted" in result.out and "urn:" not in result.out
    # Neither the plaintext (as text or base64) nor the sealed bytes come out.
    assert marker not in result.out
    assert base64.b64encode(marker.encode()).decode()[:16] not in result.out
    sealed = project.vault_file("app", "prod").read_bytes()
    assert base64.b64encode(sealed[-48:]).decode() not in result.out
    assert sealed[-48:].hex() not in result.out


def test_history_across_an_age_rotation(vault_project: VaultProject) -> None:
    """Old versions stay readable (diff, log) after `rotate`; rollback restores only
    versions under the current data key, since a removed member still knows the old one."""
    deploy(vault_project, "prod", "before-rotation")
    assert vault_project.cli("commit", "prod").code == 0
    v1 = head(vault_project)
    rotated = vault_project.cli("rotate")
    assert rotated.code == 0, rotated.output
    rotation = head(vault_project)
    deploy(vault_project, "prod", "after-rotation")
    assert vault_project.cli("commit", "prod").code == 0
    log = vault_project.cli("log", "prod")
    assert log.code == 0 and "? resources" not in log.out
    assert len(log.out.splitlines()) == 3
    diff = vault_project.cli("diff", "prod", v1, "--kind", "app")
    assert '-            "marker": "before-rotation"' in diff.out
    shown = git_out(vault_project, "log", "-p", "--", "infra/state/app", env=vault_project.env)
    assert '+            "marker": "before-rotation"' in shown.stdout
    assert "not decrypted" not in shown.stdout
    count = commit_count(vault_project)
    assert_refused(
        vault_project.cli("rollback", "prod", "--to", v1), 1, "key rotation", "sst-vault log"
    )
    assert commit_count(vault_project) == count
    # The rotation commit re-sealed the same state under the new key: that one restores.
    result = vault_project.cli("rollback", "prod", "--to", rotation, "--prepare")
    assert result.code == 0, result.output
    assert (
        sstfake.read_state(vault_project.home, vault_project.app, "prod")["checkpoint"]["latest"][
            "resources"
        ][0]["outputs"]["marker"]
        == "before-rotation"
    )
