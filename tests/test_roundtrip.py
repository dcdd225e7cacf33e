"""commit, a wiped SST home, prepare: everything comes back byte for byte, through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sstfake
from conftest import SST_CONFIG, VaultProject, git, new_key, run_cli
from helpers import (
    SYNCED_KINDS,
    add_remote,
    clone,
    commit_count,
    copied_vault_project,  # noqa: F401 (a fixture)
    deploy,
    fresh_project,
    head,
    mode,
    other_home,
    temp_files,
    tree_state,
)


@pytest.fixture(params=["age", "fernet"])
def project(request, tmp_path: Path) -> VaultProject:
    return fresh_project(tmp_path, request.param)


def deploy_all(p: VaultProject) -> None:
    """Two stages with all kinds, one with state only, and fallback secrets."""
    deploy(p, "prod", "prod-marker", secrets={"STRIPE": "sk_live_1", "DB": 'p<a>&"ss'})
    deploy(p, "dev-2", "dev-marker", resources=1)
    sstfake.write_secrets(p.home, p.app, None, {"SHARED": "fallback-value"})


def synced_files(p: VaultProject) -> dict[str, bytes]:
    return {k: v for k, v in p.snapshot_home().items() if k.split("/")[0] in SYNCED_KINDS}


def test_roundtrip_all_kinds_and_stages(project: VaultProject):
    p = project
    deploy_all(p)
    before = synced_files(p)
    assert len(before) == 7  # prod x3, dev-2 x2, _fallback x2
    result = p.cli("commit", "--all")
    assert result.code == 0, result.output
    for kind in SYNCED_KINDS:
        assert p.vault_file(kind, "prod").is_file()
    assert p.vault_file("app", "_fallback").exists() is False

    shutil.rmtree(p.home / "state")  # a fresh CI runner
    result = p.cli("prepare", "--all")
    assert result.code == 0, result.output
    assert synced_files(p) == before
    for rel in before:
        assert mode(p.home / "state" / rel) == 0o600, rel
    # The secret file opens with the restored passphrase, as SST opens it.
    assert sstfake.read_secrets(p.home, p.app, "prod") == {"STRIPE": "sk_live_1", "DB": 'p<a>&"ss'}
    assert sstfake.read_secrets(p.home, p.app, None) == {"SHARED": "fallback-value"}
    assert (
        sstfake.read_state(p.home, p.app, "prod")["checkpoint"]["latest"]["resources"][0][
            "outputs"
        ]["marker"]
        == "prod-marker"
    )
    assert temp_files(p.root, p.home) == []


def test_prepare_into_a_brand_new_home(vault_project: VaultProject, tmp_path: Path):
    """No sync records at all (another machine): prepare writes everything."""
    p = vault_project
    deploy_all(p)
    assert p.cli("commit", "prod", "_fallback", "dev-2").code == 0
    fresh = other_home(p, tmp_path / "ci-home")
    result = fresh.cli("prepare", "prod", "_fallback")
    assert result.code == 0, result.output
    assert synced_files(fresh) == {
        k: v for k, v in synced_files(p).items() if not k.endswith("dev-2.json")
    }


def test_commit_message_names_app_stage_and_kinds(vault_project: VaultProject):
    p = vault_project
    deploy(p, "prod", secrets={"A": "b"})
    assert p.cli("commit", "prod").code == 0
    message = p.git("log", "-1", "--format=%B")
    assert p.app in message and "prod" in message
    for kind in SYNCED_KINDS:
        assert kind in message
    # Only what changed is named; -m keeps the user's words first.
    deploy(p, "prod", "second")
    assert p.cli("commit", "prod", "-m", "deploy 42").code == 0
    message = p.git("log", "-1", "--format=%B")
    assert message.startswith("deploy 42\n")
    assert "prod: app" in message and "secret" not in message and "passphrase" not in message
    # The user's git identity is kept (no fallback identity when one is configured).
    assert p.git("log", "-1", "--format=%an <%ae>").strip() == "Test User <test@example.com>"


def test_sst_per_machine_files_are_never_touched(vault_project: VaultProject):
    p = vault_project
    deploy(p, "prod", secrets={"A": "b"})
    sstfake.write_lock_and_history(p.home, p.app, "prod")
    sstfake.write_lock_and_history(p.home, p.app, "prod", locked=False)
    history = {
        k: v for k, v in tree_state(p.home / "state").items() if k.split("/")[0] not in SYNCED_KINDS
    }
    assert {k.split("/")[0] for k in history} == {"lock", "update", "snapshot", "eventlog"}

    assert p.cli("commit", "--all").code == 0
    deploy(p, "prod", "newer")
    assert p.cli("commit", "prod").code == 0
    shutil.rmtree(p.home / "state" / "app")
    assert p.cli("prepare", "--all").code == 0
    assert p.cli("status").code == 0

    after = tree_state(p.home / "state")
    assert {k: after[k] for k in history} == history
    tracked = p.git("ls-files").splitlines()
    assert not [t for t in tracked if any(w in t for w in ("lock", "update", "snapshot", "event"))]
    expected = {f"infra/state/{k}/prod.json.vault" for k in SYNCED_KINDS}
    if (p.root / "infra" / "state" / "data-key.age").exists():
        expected |= {"infra/state/data-key.age", "infra/state/key-record.jsonl"}
    assert set(p.git("ls-files", "infra/state").splitlines()) == expected


def work_tree(p: VaultProject) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtimes of the work tree's files (vault files, config, git attributes)."""
    return {k: v for k, v in tree_state(p.root).items() if not k.startswith(".git/")}


def test_nothing_changed_means_no_commit_and_no_rewrite(project: VaultProject):
    p = project
    deploy_all(p)
    assert p.cli("commit", "--all").code == 0
    commit = head(p)
    repo_before = work_tree(p)
    home_before = tree_state(p.home / "state")

    result = p.cli("commit", "--all")
    assert result.code == 0, result.output
    assert "no commit" in result.err
    assert head(p) == commit
    assert work_tree(p) == repo_before

    # prepare of what is already there rewrites nothing either.
    result = p.cli("prepare", "--all")
    assert result.code == 0, result.output
    assert "written" not in result.err
    assert tree_state(p.home / "state") == home_before
    assert p.git("status", "--porcelain") == ""


def test_commit_stages_only_vault_files(vault_project: VaultProject):
    p = vault_project
    (p.root / "notes.txt").write_text("staged, not ready\n")
    p.git("add", "notes.txt")
    (p.root / "sst.config.ts").write_text("// edited, not staged\n")
    (p.root / "scratch.txt").write_text("untracked\n")
    (p.root / "infra" / "state" / "README.md").write_text("untracked, next to vault files\n")
    deploy(p, "prod", secrets={"A": "b"})

    assert p.cli("commit", "prod").code == 0
    committed = set(p.git("show", "--name-only", "--format=", "HEAD").split())
    assert committed == {
        ".gitattributes",
        ".gitignore",
        "sst-vault.toml",
        "infra/state/data-key.age",
        "infra/state/key-record.jsonl",
        *(f"infra/state/{kind}/prod.json.vault" for kind in SYNCED_KINDS),
    }
    status = p.git("status", "--porcelain").splitlines()
    assert sorted(status) == sorted(
        ["A  notes.txt", " M sst.config.ts", "?? scratch.txt", "?? infra/state/README.md"]
    )

    # A second commit of one stage takes only that stage's changed files.
    deploy(p, "prod", "again")
    deploy(p, "dev")
    assert p.cli("commit", "prod").code == 0
    assert p.git("show", "--name-only", "--format=", "HEAD").split() == [
        "infra/state/app/prod.json.vault"
    ]
    assert "A  notes.txt" in p.git("status", "--porcelain").splitlines()


def test_commit_leaves_every_kind_of_staged_work_staged(vault_project: VaultProject):
    """The commit is made from a copy of the index with the user's staged changes set back to
    HEAD: a staged edit, deletion, new file (names that look like pathspec magic too) and an
    intent-to-add all stay staged exactly as they were, none is committed, no copy is left."""
    p = vault_project
    deploy(p, "prod")
    assert p.cli("commit", "prod").code == 0
    for name in ("tracked.txt", "gone.txt", "*"):
        (p.root / name).write_text(f"{name} v1\n")
    p.git("add", "tracked.txt", "gone.txt", "--", "*")
    p.git("commit", "-q", "-m", "user files")
    (p.root / "tracked.txt").write_text("staged edit\n")
    (p.root / ":(glob)new file.txt").write_text("staged new file\n")
    (p.root / "planned.txt").write_text("intent to add\n")
    p.git("add", "tracked.txt", "--", ":(literal):(glob)new file.txt")
    p.git("rm", "-q", "gone.txt")
    p.git("add", "-N", "planned.txt")
    (p.root / "tracked.txt").write_text("edited again, not staged\n")
    staged = p.git("diff", "--cached", "--name-status")
    status = p.git("status", "--porcelain")
    deploy(p, "prod", "again")

    assert p.cli("commit", "prod").code == 0
    assert p.git("show", "--name-only", "--format=", "HEAD").split() == [
        "infra/state/app/prod.json.vault"
    ]
    assert p.git("diff", "--cached", "--name-status") == staged
    assert p.git("status", "--porcelain") == status
    assert p.git("show", ":tracked.txt") == "staged edit\n"
    assert list((p.root / ".git").glob("sst-vault-index-*")) == []


def test_commit_during_a_merge_is_refused_by_git_as_before(vault_project: VaultProject):
    """A merge in progress: a plain commit would conclude it with the user's merge, so the
    commit is git's partial commit, which git refuses; nothing is committed."""
    p = vault_project
    deploy(p, "prod")
    assert p.cli("commit", "prod").code == 0
    base = p.git("rev-parse", "HEAD").strip()
    p.git("checkout", "-q", "-b", "side")
    (p.root / "side.txt").write_text("side\n")
    p.git("add", "side.txt")
    p.git("commit", "-q", "-m", "side")
    p.git("checkout", "-q", "-")
    p.git("merge", "-q", "--no-ff", "--no-commit", "side")
    deploy(p, "prod", "again")
    result = p.cli("commit", "prod")
    assert result.code == 1 and "partial commit during a merge" in result.err, result.output
    assert p.git("rev-parse", "HEAD").strip() == base
    assert (p.root / ".git" / "MERGE_HEAD").exists()


def status_of(p: VaultProject, *stages: str) -> dict[tuple[str, str], str]:
    result = p.cli("status", "--json", *stages)
    assert result.code == 0, result.output
    rows = json.loads(result.out)
    text = p.cli("status", *stages)
    assert text.code == 0, text.output
    for row in rows:  # the table says the same as the JSON
        assert any(
            line.split()[:2] == [row["stage"], row["kind"]] and row["state"] in line
            for line in text.out.splitlines()
        ), (row, text.out)
    return {(r["stage"], r["kind"]): r["state"] for r in rows}


def test_status_in_sync_home_ahead_repo_ahead_diverged_missing(tmp_path: Path):
    a = fresh_project(tmp_path, name="a")
    deploy(a, "prod", "v1", secrets={"A": "1"})
    assert a.cli("commit", "prod").code == 0
    remote = add_remote(a, tmp_path)
    b = clone(a, remote, tmp_path, "b")

    assert status_of(b, "prod") == {
        ("prod", "passphrase"): "repo ahead",
        ("prod", "app"): "repo ahead",
        ("prod", "secret"): "repo ahead",
    }
    assert b.cli("prepare", "prod").code == 0
    in_sync = {(("prod", k)): "in sync" for k in SYNCED_KINDS}
    assert status_of(a) == in_sync
    assert status_of(b) == in_sync

    # a deploys again (not committed yet): home ahead there, nothing new for b.
    deploy(a, "prod", "v2")
    assert status_of(a)[("prod", "app")] == "home ahead"
    assert status_of(b) == in_sync
    assert a.cli("commit", "prod").code == 0
    a.git("push", "-q")
    assert status_of(a) == in_sync

    # b pulls: repo ahead; b deploys on its old state as well: diverged.
    b.git("pull", "-q")
    assert status_of(b) == {**in_sync, ("prod", "app"): "repo ahead"}
    raw = json.loads(b.cli("status", "--json", "prod").out)
    app_row = next(r for r in raw if r["kind"] == "app")
    assert app_row["repo_serial"] == 2 and app_row["synced_serial"] == 1
    assert app_row["home_present"] is True
    deploy(b, "prod", "v2-on-b")
    assert status_of(b)[("prod", "app")] == "diverged"
    assert status_of(b)[("prod", "secret")] == "in sync"

    # A stage nobody has: missing, and a stage only in the home: home ahead.
    assert status_of(a, "staging") == {("staging", "-"): "missing"}
    deploy(a, "dev")
    assert status_of(a, "dev") == {
        ("dev", "passphrase"): "home ahead",
        ("dev", "app"): "home ahead",
    }
    assert commit_count(a) == 3


def test_users_edits_to_gitignore_and_gitattributes_stay_uncommitted(vault_project: VaultProject):
    """Only the entries init wrote are sst-vault's: a user's own lines are not swept in."""
    p = vault_project
    deploy(p, "prod")
    assert p.cli("commit", "prod").code == 0
    with (p.root / ".gitignore").open("a") as f:
        f.write("node_modules/\n")
    with (p.root / ".gitattributes").open("a") as f:
        f.write("*.png binary\n")
    deploy(p, "prod", "v2")
    assert p.cli("commit", "prod").code == 0
    assert p.git("show", "--name-only", "--format=", "HEAD").split() == [
        "infra/state/app/prod.json.vault"
    ]
    assert sorted(p.git("status", "--porcelain").splitlines()) == [
        " M .gitattributes",
        " M .gitignore",
    ]


def test_monorepo_project_below_the_git_top(tmp_path: Path, env: dict[str, str]):
    """sst.config.ts in apps/web of a larger repository; commands run from anywhere inside."""
    top = tmp_path / "mono"
    web = top / "apps" / "web"
    web.mkdir(parents=True)
    git("init", "-q", cwd=top, env=env)
    (web / "sst.config.ts").write_text(SST_CONFIG)
    (top / "README.md").write_text("monorepo\n")
    git("add", ".", cwd=top, env=env)
    git("commit", "-q", "-m", "mono", cwd=top, env=env)
    key = new_key(env)
    p = VaultProject(web, tmp_path / "sst-home", {**env, "SST_VAULT_KEY": key}, key)
    assert p.cli("init", "--no-keyring").code == 0
    deploy(p, "prod", secrets={"A": "b"})
    before = synced_files(p)

    assert p.cli("commit", "prod", cwd=web / "infra").code == 0
    committed = set(p.git("show", "--name-only", "--format=", "HEAD").split())
    assert "apps/web/infra/state/app/prod.json.vault" in committed
    assert all(name.startswith("apps/web/") for name in committed), committed
    shutil.rmtree(p.home / "state")
    result = run_cli(
        "--sst-home", str(p.home), "--project", str(web), "prepare", "prod", cwd=tmp_path, env=p.env
    )
    assert result.code == 0, result.output
    assert synced_files(p) == before
    assert status_of(p) == {("prod", k): "in sync" for k in SYNCED_KINDS}
    assert git("status", "--porcelain", cwd=top, env=env) == ""


def test_commit_repairs_a_damaged_vault_file_behind_a_matching_header(vault_project):
    """The clear header may match the home while the body was damaged: commit re-seals it."""
    p = vault_project
    deploy(p, "prod", "repair-marker")
    assert p.cli("commit", "prod").code == 0
    vault_file = p.vault_file("app", "prod")
    damaged = bytearray(vault_file.read_bytes())
    damaged[-5] ^= 0x01  # the last chunk's tag: the header still says "same content"
    vault_file.write_bytes(bytes(damaged))
    result = p.cli("commit", "prod")
    assert result.code == 0, result.output
    assert "app: written (serial 2)" in result.err
    assert vault_file.read_bytes() != bytes(damaged)
    before = synced_files(p)
    shutil.rmtree(p.home / "state")
    assert p.cli("prepare", "prod").code == 0
    assert synced_files(p) == before
