"""migrate (adopting the plaintext recipe) and scan (finding plaintext), on real repositories."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import sstfake
from conftest import SST_CONFIG, VaultProject, base_env, git, new_key, run_cli
from helpers import assert_refused, commit_count, deploy, head, stage_key

APP = "demo-app"
STAGES = ("prod", "dev")
ROOT_DIR = Path(__file__).resolve().parent.parent


def recipe_repo(tmp_path: Path, *, with_secrets: bool = True) -> tuple[VaultProject, dict]:
    """A repo made the recipe's way: SST files copied to infra/state/<kind>/<stage>.json and
    committed with `git add .`, twice (two deploys). Returns the project (not initialised) and
    the plaintext of the last deploy, keyed by (kind, stage)."""
    env = base_env(tmp_path)
    root = tmp_path / "recipe"
    root.mkdir()
    git("init", "-q", cwd=root, env=env)
    (root / "sst.config.ts").write_text(SST_CONFIG)
    deployer_home = tmp_path / "deployer-home"
    kinds = ("app", "passphrase", "secret") if with_secrets else ("app", "passphrase")
    files: dict[tuple[str, str], bytes] = {}
    for round_ in (1, 2):
        for stage in STAGES:
            sstfake.write_passphrase(deployer_home, APP, stage, stage_key(stage))
            if with_secrets:
                sstfake.write_secrets(deployer_home, APP, stage, {"TOKEN": f"tok-{stage}-{round_}"})
            sstfake.write_state(deployer_home, APP, stage, marker=f"{stage}-round-{round_}")
            for kind in kinds:
                target = root / "infra" / "state" / kind / f"{stage}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(sstfake.state_path(deployer_home, kind, APP, stage), target)
                files[(kind, stage)] = target.read_bytes()
        git("add", ".", cwd=root, env=env)
        git("commit", "-q", "-m", f"deploy {round_}", cwd=root, env=env)
    env["SST_VAULT_KEY"] = new_key(env)
    project = VaultProject(root, tmp_path / "dev-sst-home", env, env["SST_VAULT_KEY"])
    return project, files


def plaintext_in_git(project: VaultProject) -> list[str]:
    return [p for p in project.git("ls-files").splitlines() if p.endswith(".json")]


# --- migrate ----------------------------------------------------------------------------------


def test_migrate_a_recipe_repo(tmp_path: Path) -> None:
    project, files = recipe_repo(tmp_path)
    recipe_commits = project.git("rev-list", "HEAD").split()
    assert len(plaintext_in_git(project)) == 6
    assert project.cli("init", "--no-keyring").code == 0
    count = commit_count(project)

    result = project.cli("migrate")
    assert result.code == 0, result.output
    assert commit_count(project) == count + 1
    # No plaintext left in the tree, the index or HEAD.
    assert plaintext_in_git(project) == []
    assert not list((project.root / "infra" / "state").rglob("*.json"))
    assert project.git("ls-tree", "-r", "--name-only", "HEAD", "infra/state").split() == sorted(
        [f"infra/state/{k}/{s}.json.vault" for k in ("app", "passphrase", "secret") for s in STAGES]
        + ["infra/state/data-key.age", "infra/state/key-record.jsonl"]
    )
    assert project.git("status", "--porcelain").strip() == ""
    # The ignore rules keep a copied-back plaintext file out.
    assert project.git("check-ignore", "infra/state/app/prod.json").strip()
    # The warning: history still holds it; how to purge; what to rotate.
    assert "2 earlier commit(s) still hold the plaintext" in result.err
    purge = "git filter-repo --invert-paths --path-glob 'infra/state/passphrase/*.json'"
    assert purge in result.err
    assert "leaked" in result.err and "rotate" in result.err
    # Vault files open, to exactly the plaintext of the last deploy.
    prepared = project.cli("prepare", "--all")
    assert prepared.code == 0, prepared.output
    for (kind, stage), data in files.items():
        assert project.state_file(kind, stage).read_bytes() == data
    assert sstfake.read_secrets(project.home, APP, "prod") == {"TOKEN": "tok-prod-2"}
    # The recipe's history is untouched (never rewritten) and scan still finds it there.
    assert project.git("rev-list", "HEAD").split()[-len(recipe_commits) :] == recipe_commits
    assert project.cli("scan").code == 0
    history = project.cli("scan", "--history")
    assert history.code == 1
    for commit in recipe_commits:
        assert f"{commit[:12]} infra/state/app/prod.json: Pulumi checkpoint" in history.out
    # The passphrase never changed: only the first deploy's commit introduced it.
    assert f"{recipe_commits[-1][:12]} infra/state/passphrase/prod.json" in history.out
    # Nothing left to migrate: a clear refusal, no commit.
    again = project.cli("migrate")
    assert_refused(again, 2, "no plaintext state")
    assert commit_count(project) == count + 1


def test_migrate_without_secrets_and_with_other_staged_work(tmp_path: Path) -> None:
    project, files = recipe_repo(tmp_path, with_secrets=False)
    assert project.cli("init", "--no-keyring").code == 0
    (project.root / "notes.txt").write_text("work in progress")
    project.git("add", "notes.txt")
    result = project.cli("migrate")
    assert result.code == 0, result.output
    # The user's staged file stays staged, outside the migration commit.
    assert "notes.txt" not in project.git("show", "--name-only", "--format=", "HEAD")
    assert project.git("diff", "--cached", "--name-only").split() == ["notes.txt"]
    assert not (project.root / "infra" / "state" / "secret").exists() or not list(
        (project.root / "infra" / "state" / "secret").iterdir()
    )
    assert project.cli("prepare", "prod").code == 0
    assert project.state_file("app", "prod").read_bytes() == files[("app", "prod")]


def test_migrate_needs_init_and_refuses_conflicts(tmp_path: Path) -> None:
    project, _files = recipe_repo(tmp_path)
    assert_refused(project.cli("migrate"), 2, "sst-vault init")
    assert project.cli("init", "--no-keyring").code == 0
    # A vault file that already holds a different state for prod: refused, nothing changed.
    deploy(project, "prod", "vault-side")
    assert project.cli("commit", "prod").code == 0
    before = {p: p.read_bytes() for p in (project.root / "infra").rglob("*") if p.is_file()}
    count = commit_count(project)
    assert_refused(project.cli("migrate"), 1, "differs", "--force")
    assert {p: p.read_bytes() for p in (project.root / "infra").rglob("*") if p.is_file()} == before
    assert commit_count(project) == count
    # --force: the plaintext replaces it with a higher serial.
    forced = project.cli("migrate", "--force")
    assert forced.code == 0, forced.output
    assert "prod app: sealed (serial 2)" in forced.err


def test_migrate_refuses_invalid_plaintext(tmp_path: Path) -> None:
    project, _files = recipe_repo(tmp_path)
    assert project.cli("init", "--no-keyring").code == 0
    (project.root / "infra" / "state" / "app" / "dev.json").write_text('{"checkpoint": ')
    count = commit_count(project)
    assert_refused(project.cli("migrate"), 1, "dev.json", "not valid JSON")
    assert commit_count(project) == count
    assert not list((project.root / "infra" / "state").rglob("*.vault"))
    assert len(plaintext_in_git(project)) == 6


# --- scan -----------------------------------------------------------------------------------


def test_scan_finds_plaintext_in_tree_and_history(tmp_path: Path) -> None:
    project, _files = recipe_repo(tmp_path)
    first, second = project.git("rev-list", "--reverse", "HEAD").split()
    tree = run_cli("scan", cwd=project.root, env=project.env)  # no sst-vault.toml here
    assert tree.code == 1
    lines = tree.out.splitlines()
    assert len(lines) == 6
    assert "infra/state/app/prod.json: Pulumi checkpoint" in tree.out
    assert "infra/state/passphrase/dev.json: SST passphrase" in tree.out
    assert "infra/state/secret/prod.json: SST secret file" in tree.out
    assert tree.err.startswith("Error: 6 plaintext SST file(s)") and "Traceback" not in tree.err
    # Deleted in a later commit: the tree is clean, history is not.
    project.git("rm", "-q", "-r", "infra/state")
    project.git("commit", "-q", "-m", "remove plaintext")
    clean = run_cli("scan", cwd=project.root, env=project.env)
    assert clean.code == 0 and clean.out == ""
    history = run_cli("scan", "--history", cwd=project.root, env=project.env)
    assert history.code == 1
    for commit in (first, second):
        for kind, stage in (("app", "prod"), ("secret", "dev")):
            assert f"{commit[:12]} infra/state/{kind}/{stage}.json: " in history.out
    # Passphrases did not change in the second deploy: found once, in the first commit.
    assert f"{first[:12]} infra/state/passphrase/dev.json: SST passphrase" in history.out
    assert f"{second[:12]} infra/state/passphrase/" not in history.out
    assert len(history.out.splitlines()) == 6 + 4
    # A branch that is not checked out is scanned too (every ref).
    project.git("checkout", "-q", "-b", "side", first)
    (project.root / "extra").mkdir()
    shutil.copyfile(project.root / "infra/state/app/prod.json", project.root / "extra/prod.bak")
    project.git("add", "extra")
    project.git("commit", "-q", "-m", "side")
    side = head(project)
    project.git("checkout", "-q", "main")
    history = run_cli("scan", "--history", cwd=project.root, env=project.env)
    assert f"{side[:12]} extra/prod.bak: Pulumi checkpoint" in history.out


def test_scan_exclude_leaves_out_fixtures_and_says_so(tmp_path: Path) -> None:
    project, _files = recipe_repo(tmp_path)

    def scan(*args: str):
        return run_cli("scan", *args, cwd=project.root, env=project.env)

    some = scan("--exclude", "infra/state/secret", "--exclude", "*/passphrase/dev.json")
    assert some.code == 1
    assert sorted(line.split(":")[0] for line in some.out.splitlines()) == [
        "infra/state/app/dev.json",
        "infra/state/app/prod.json",
        "infra/state/passphrase/prod.json",
    ]
    assert "3 finding(s) left out by --exclude" in some.err
    assert "Error: 3 plaintext SST file(s)" in some.err
    every = scan("--exclude", "infra/state/")
    assert every.code == 0 and every.out == ""
    assert every.err.splitlines() == [
        "6 finding(s) left out by --exclude",
        "No plaintext SST state found outside the excluded paths.",
    ]
    history = scan("--history", "--exclude", "infra/state/app")
    assert history.code == 1 and "infra/state/app/" not in history.out
    assert "infra/state/secret/prod.json" in history.out
    assert scan("--history", "--exclude", "infra").code == 0
    # A pattern that matches nothing changes nothing.
    assert len(scan("--exclude", "tests/fixtures").out.splitlines()) == 6


@pytest.mark.parametrize(
    ("path", "patterns", "expected"),
    [
        ("tests/fixtures/state/app/prod.json", ["tests/fixtures"], True),
        ("tests/fixtures/state/app/prod.json", ["tests/fixtures/"], True),
        ("tests/fixtures/state/app/prod.json", ["tests/*.json"], True),
        ("tests/fixtures/state/app/prod.json", ["tests/fix"], False),
        ("tests/fixtures/state/app/prod.json", ["fixtures"], False),
        ("infra/state/app/prod.json", ["*/app/*", "nothing"], True),
        ("infra/state/app/prod.json", [], False),
    ],
)
def test_exclude_patterns(path: str, patterns: list[str], expected: bool) -> None:
    from vault.scan import excluded

    assert excluded(path, patterns) is expected


def test_scan_by_content_anywhere(tmp_path: Path, env: dict[str, str]) -> None:
    root = tmp_path / "any"
    root.mkdir()
    git("init", "-q", cwd=root, env=env)
    home = tmp_path / "h"
    sstfake.write_secrets(home, APP, "prod", {"A": "b"})
    sstfake.write_state(home, APP, "prod")
    (root / "backup").mkdir()
    shutil.copyfile(sstfake.state_path(home, "app", APP, "prod"), root / "backup" / "old.txt")
    (root / "keys" / "passphrase").mkdir(parents=True)
    shutil.copyfile(
        sstfake.state_path(home, "passphrase", APP, "prod"), root / "keys" / "passphrase" / "p"
    )
    (root / "vault" / "secret").mkdir(parents=True)
    shutil.copyfile(
        sstfake.state_path(home, "secret", APP, "prod"), root / "vault" / "secret" / "prod.json"
    )
    # Look-alikes that are not SST state.
    (root / "package.json").write_text('{"name": "x", "stack": "y"}')
    (root / "docs" / "passphrase").mkdir(parents=True)
    (root / "docs" / "passphrase" / "README.md").write_text("how to choose a passphrase\n")
    (root / "config" / "secret").mkdir(parents=True)
    (root / "config" / "secret" / "schema.json").write_text('{"type": "object", "x": 12345678}')
    (root / "ignored").mkdir()
    shutil.copyfile(sstfake.state_path(home, "app", APP, "prod"), root / "ignored" / "s.json")
    (root / ".gitignore").write_text("ignored/\n")
    result = run_cli("scan", cwd=root, env=env)
    assert result.code == 1
    found = sorted(line.split(":")[0] for line in result.out.splitlines())
    assert found == ["backup/old.txt", "keys/passphrase/p", "vault/secret/prod.json"]
    # A single file, and a folder given as PATH.
    assert run_cli("scan", "package.json", cwd=root, env=env).code == 0
    sub = run_cli("scan", "backup", cwd=root, env=env)
    assert sub.code == 1 and sub.out.startswith("old.txt: Pulumi checkpoint")
    # Staged, then deleted from the work tree: what would be committed is still found.
    shutil.copyfile(sstfake.state_path(home, "app", APP, "prod"), root / "staged.json")
    git("add", "staged.json", cwd=root, env=env)
    (root / "staged.json").unlink()
    assert "staged.json: Pulumi checkpoint" in run_cli("scan", cwd=root, env=env).out


def test_scan_outside_git_and_refusals(tmp_path: Path, env: dict[str, str]) -> None:
    home = tmp_path / "sst-home"
    deploy_files = [
        sstfake.write_secrets(home, APP, "prod", {"A": "b"}),
        sstfake.write_state(home, APP, "prod"),
    ]
    assert all(p.exists() for p in deploy_files)
    result = run_cli("scan", str(home), cwd=tmp_path, env=env)
    assert result.code == 1
    assert sorted(line.split(":")[0] for line in result.out.splitlines()) == [
        "state/app/demo-app/prod.json",
        "state/passphrase/demo-app/prod.json",
        "state/secret/demo-app/prod.json",
    ]
    assert_refused(run_cli("scan", "--history", str(home), cwd=tmp_path, env=env), 2, "git")
    assert_refused(run_cli("scan", str(tmp_path / "nope"), cwd=tmp_path, env=env), 2, "nope")


def test_scan_passes_on_a_clean_vault_repo(vault_project: VaultProject) -> None:
    deploy(vault_project, "prod", "m", secrets={"A": "b"})
    deploy(vault_project, "dev", "m")
    assert vault_project.cli("commit", "--all").code == 0
    deploy(vault_project, "prod", "m2")
    assert vault_project.cli("commit", "prod").code == 0
    tree = vault_project.cli("scan")
    assert tree.code == 0 and tree.out == "" and "No plaintext" in tree.err
    history = vault_project.cli("scan", "--history")
    assert history.code == 0 and history.out == ""
    # A plaintext file copied into the repo by mistake is caught before it is committed.
    shutil.copyfile(
        vault_project.state_file("app", "prod"),
        vault_project.root / "infra" / "state" / "state-copy.txt",
    )
    assert vault_project.cli("scan").code == 1


# --- hooks ------------------------------------------------------------------------------------


def test_pre_commit_hooks_yaml() -> None:
    text = (ROOT_DIR / ".pre-commit-hooks.yaml").read_text()
    assert "- id: sst-vault-scan" in text
    assert "entry: sst-vault scan" in text
    assert "language: python" in text
    assert "pass_filenames: false" in text


def checkout_sst_vault(tmp_path: Path, env: dict[str, str]) -> tuple[dict[str, str], Path]:
    """`env` with an `sst-vault` first on PATH that runs this checkout's code, and its call log.

    A hook runs `sst-vault` from PATH: without this, the test would check whichever sst-vault
    is installed first there (another checkout, an old release), not the code under test.
    """
    bin_dir = tmp_path / "checkout-bin"
    bin_dir.mkdir()
    calls = tmp_path / "sst-vault-calls.log"
    shim = bin_dir / "sst-vault"
    shim.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{calls}"\n'
        f'PYTHONPATH="{ROOT_DIR}" exec "{sys.executable}" -m vault "$@"\n'
    )
    shim.chmod(0o755)
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}, calls


def test_plain_git_hook_blocks_a_plaintext_commit(tmp_path: Path, env: dict[str, str]) -> None:
    """The README's .git/hooks/pre-commit snippet, in a real repository, with this checkout."""
    env, calls = checkout_sst_vault(tmp_path, env)
    root = tmp_path / "hooked"
    root.mkdir()
    git("init", "-q", cwd=root, env=env)
    hook = root / ".git" / "hooks" / "pre-commit"
    hook.write_text(
        "#!/bin/sh\n# sst-vault: refuse commits while plaintext SST state is here\n"
        "exec sst-vault scan\n"
    )
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    (root / "ok.txt").write_text("fine")
    git("add", "ok.txt", cwd=root, env=env)
    git("commit", "-q", "-m", "ok", cwd=root, env=env)
    assert calls.read_text().splitlines() == ["scan"], "the hook did not run this checkout's scan"
    home = tmp_path / "h"
    sstfake.write_state(home, APP, "prod")
    (root / "infra" / "state" / "app").mkdir(parents=True)
    shutil.copyfile(
        sstfake.state_path(home, "app", APP, "prod"), root / "infra" / "state" / "app" / "prod.json"
    )
    git("add", ".", cwd=root, env=env)
    import subprocess

    refused = subprocess.run(
        ["git", "commit", "-q", "-m", "oops"], cwd=root, env=env, capture_output=True, text=True
    )
    assert refused.returncode != 0
    assert "infra/state/app/prod.json" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr
    assert calls.read_text().splitlines() == ["scan", "scan"]
    assert git("rev-list", "--count", "HEAD", cwd=root, env=env).strip() == "1"


def test_scan_checks_the_staged_version_too(tmp_path: Path, env: dict[str, str]) -> None:
    """Plaintext staged, then overwritten in the work tree: the commit would still take it."""
    root = tmp_path / "staged"
    root.mkdir()
    git("init", "-q", cwd=root, env=env)
    home = tmp_path / "h"
    sstfake.write_state(home, APP, "prod")
    shutil.copyfile(sstfake.state_path(home, "app", APP, "prod"), root / "notes.json")
    git("add", "notes.json", cwd=root, env=env)
    (root / "notes.json").write_text('{"harmless": true}\n')
    result = run_cli("scan", cwd=root, env=env)
    assert result.code == 1
    assert result.out == (
        "notes.json: Pulumi checkpoint (SST app state) in plaintext (staged version)\n"
    )
    git("add", "notes.json", cwd=root, env=env)
    assert run_cli("scan", cwd=root, env=env).code == 0


def test_scan_sees_through_formatting_encoding_and_compression(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """Each way of hiding plaintext state from a path or byte-pattern check is caught."""
    import gzip
    import json
    import lzma
    import subprocess

    root = tmp_path / "evasions"
    root.mkdir()
    git("init", "-q", cwd=root, env=env)
    home = tmp_path / "h"
    sstfake.write_secrets(home, APP, "prod", {"API_TOKEN": "t0k"})
    state = sstfake.write_state(home, APP, "prod").read_bytes()
    checkpoint = json.loads(state)
    passphrase = sstfake.state_path(home, "passphrase", APP, "prod").read_bytes()
    secret = sstfake.state_path(home, "secret", APP, "prod").read_bytes()
    files = {
        # `jq -S .` (sorted keys, "checkpoint" holds "latest" before "stack"), and minified.
        "backup/sorted.json": json.dumps(checkpoint, sort_keys=True, indent=2).encode(),
        "backup/min.json": json.dumps(checkpoint, sort_keys=True, separators=(",", ":")).encode(),
        # An editor's UTF-8 byte order mark; PowerShell's UTF-16.
        "backup/bom.json": b"\xef\xbb\xbf" + state,
        "backup/utf16.json": b"\xff\xfe" + state.decode().encode("utf-16-le"),
        # Compressed, by the gzip CLI (below) and by xz.
        "backup/prod.json.xz": lzma.compress(state),
        # A passphrase outside any passphrase/ folder, and SST's secret file under secrets/.
        "config/prod-passphrase.txt": passphrase + b"\n",
        "secrets/prod.json": secret,
        # An export (`pulumi stack export` shape) with its keys sorted.
        "export.json": json.dumps(
            {
                "deployment": {
                    "resources": checkpoint["checkpoint"]["latest"]["resources"],
                    "manifest": {},
                },
                "version": 3,
            },
            sort_keys=True,
        ).encode(),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "backup" / "prod.json").write_bytes(state)
    subprocess.run(["gzip", "-9", str(root / "backup" / "prod.json")], check=True)
    # Look-alikes that are none of these.
    (root / "package.json").write_text('{"name": "x", "stack": "y", "latest": "1.0"}')
    (root / "docs").mkdir()
    (root / "docs" / "package.json.gz").write_bytes(gzip.compress(b'{"name": "x"}'))
    (root / "docs" / "logo.png").write_bytes(bytes(range(256)) * 4)
    (root / "docs" / "text.json").write_text('{"note": "' + "é" * 100 + '"}')
    (root / "docs" / "short-key.txt").write_text("not a passphrase\n")
    result = run_cli("scan", cwd=root, env=env)
    assert result.code == 1, result.output
    found = {line.split(":")[0]: line for line in result.out.splitlines()}
    assert sorted(found) == sorted([*files, "backup/prod.json.gz"]), result.out
    assert "Pulumi checkpoint" in found["backup/sorted.json"]
    assert "(gzip-compressed)" in found["backup/prod.json.gz"]
    assert "(xz-compressed)" in found["backup/prod.json.xz"]
    assert "SST passphrase" in found["config/prod-passphrase.txt"]
    assert "SST secret file" in found["secrets/prod.json"]
    assert "exported Pulumi state" in found["export.json"]
    # The same files committed: --history finds them in every commit that holds them.
    git("add", "-A", cwd=root, env=env)
    git("commit", "-q", "-m", "oops", cwd=root, env=env)
    history = run_cli("scan", "--history", cwd=root, env=env)
    assert history.code == 1
    assert len(history.out.splitlines()) == len(found)
    # Nothing of the secrets is printed.
    assert passphrase.strip().decode() not in result.output + history.output
