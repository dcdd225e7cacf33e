"""Team key lifecycle with real git, real crypto and the real `age` CLI: recipients and rotate.

Every member is a separate key and a separate SST home (another machine); CI is the key the
vault was initialised with (`SST_VAULT_KEY`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from conftest import VaultProject, git, make_project, needs, new_key
from helpers import (
    assert_refused,
    before,
    commit_count,
    deploy,
    head,
    key_id,
    public_of,
    temp_files,
    vault_header,
)

AGE = shutil.which("age")
needs_age = needs("age")


def member(project: VaultProject, tmp_path: Path, name: str, key: str | None = None):
    """Another person: their own key and SST home, the same repository."""
    key = key or new_key(project.env)
    env = dict(project.env, SST_VAULT_KEY=key)
    return VaultProject(project.root, tmp_path / f"{name}-sst-home", env, key)


def age_decrypt(path: Path, secret: str, tmp_path: Path) -> subprocess.CompletedProcess:
    identity = tmp_path / "identity.txt"
    identity.write_text(secret + "\n")
    identity.chmod(0o600)
    try:
        return subprocess.run(
            [AGE, "-d", "-i", str(identity), str(path)], capture_output=True, timeout=60
        )
    finally:
        identity.unlink()


def deploy_two(project: VaultProject) -> dict[str, bytes]:
    deploy(project, "prod", "p1", secrets={"ApiKey": "prod-secret"})
    deploy(project, "dev", "d1")
    result = project.cli("commit", "--all")
    assert result.code == 0, result.output
    return project.snapshot_home()


def fresh_prepare(person: VaultProject, *stages: str):
    if person.home.exists():
        shutil.rmtree(person.home)
    return person.cli("prepare", *stages)


# --- recipients add ------------------------------------------------------------------------


@needs_age
def test_added_member_prepares_with_own_key(vault_project, tmp_path):
    ci = vault_project
    files = deploy_two(ci)
    bob = member(ci, tmp_path, "bob")
    before = key_id(ci)

    result = bob.cli("prepare", "prod")  # not a recipient yet
    assert_refused(result, 1, "not a recipient")
    result = bob.cli("key", "export-public")
    assert "not a recipient" in result.err and "recipients add" in result.err

    commits = commit_count(ci)
    result = ci.cli("recipients", "add", "bob", public_of(bob))
    assert result.code == 0, result.output
    assert commit_count(ci) == commits + 1
    changed = ci.git("show", "--name-only", "--format=%s", "HEAD").split()
    assert changed[:4] == ["sst-vault:", "add", "recipient", "bob"]
    assert sorted(changed[4:]) == ["infra/state/data-key.age", "infra/state/key-record.jsonl"]
    assert ci.git("status", "--porcelain") == ""

    listing = ci.cli("recipients", "list")
    assert listing.code == 0, listing.output
    names = dict(line.split() for line in listing.out.splitlines())
    assert names == {"ci": public_of(ci), "bob": public_of(bob)}

    # The same data key, now also wrapped to bob: the real age CLI opens it with bob's key.
    assert key_id(ci) == key_id(bob) == before
    opened = age_decrypt(ci.root / "infra/state/data-key.age", bob.key, tmp_path)
    assert opened.returncode == 0 and len(opened.stdout) == 32, opened.stderr

    result = fresh_prepare(bob, "prod", "dev")
    assert result.code == 0, result.output
    assert bob.snapshot_home() == files


def test_recipient_refusals_change_nothing(vault_project, tmp_path):
    ci = vault_project
    deploy_two(ci)
    bob = member(ci, tmp_path, "bob")
    assert ci.cli("recipients", "add", "bob", public_of(bob)).code == 0
    repo, commit = ci.snapshot_repo(), head(ci)
    config = (ci.root / "sst-vault.toml").read_bytes()
    other = public_of(member(ci, tmp_path, "carol"))

    cases = [
        (("recipients", "add", "bob", other), 2, "already a recipient"),
        (("recipients", "add", "carol", public_of(bob)), 2, "already the recipient bob"),
        (("recipients", "add", "carol", "age1notakey"), 2, "not an age X25519 recipient"),
        (("recipients", "add", "../evil", other), 2, "invalid recipient name"),
        (("recipients", "remove", "mallory"), 2, "not a recipient"),
        # CI's own key is the one in use: removing it would lock CI out.
        (("recipients", "remove", "ci"), 1, "none of your keys"),
    ]
    for args, code, words in cases:
        assert_refused(ci.cli(*args), code, words)
    # bob cannot remove himself either, nor can anyone remove the last recipient.
    assert_refused(bob.cli("recipients", "remove", "bob"), 1, "none of your keys")
    assert ci.cli("recipients", "remove", "bob").code == 0
    assert_refused(ci.cli("recipients", "remove", "ci"), 1, "only recipient")
    assert ci.snapshot_repo() != repo  # the removal above did rotate
    repo, commit = ci.snapshot_repo(), head(ci)
    assert_refused(bob.cli("recipients", "add", "dave", other), 1, "wrong key")
    assert ci.snapshot_repo() == repo and head(ci) == commit
    assert (ci.root / "sst-vault.toml").read_bytes() == config  # settings only: never recipients
    assert temp_files(ci.root) == []

    fernet = make_project(tmp_path, name="fernet", backend="fernet")
    for args in (
        ("recipients", "list"),
        ("recipients", "add", "bob", other),
        ("recipients", "remove", "bob"),
    ):
        assert_refused(fernet.cli(*args), 2, "fernet")
    assert_refused(fernet.cli("key", "export-public"), 2, "Fernet key")


# --- recipients remove ---------------------------------------------------------------------


@needs_age
def test_removed_member_opens_nothing_committed_afterwards(vault_project, tmp_path):
    ci = vault_project
    files = deploy_two(ci)
    alice, bob = member(ci, tmp_path, "alice"), member(ci, tmp_path, "bob")
    for name, person in (("alice", alice), ("bob", bob)):
        assert ci.cli("recipients", "add", name, public_of(person)).code == 0
    assert fresh_prepare(bob, "prod", "dev").code == 0
    old_id = key_id(ci)
    serials = {s: vault_header(ci.vault_file("app", s))["serial"] for s in ("prod", "dev")}
    before_removal = head(ci)

    result = ci.cli("recipients", "remove", "bob")
    assert result.code == 0, result.output
    assert "Traceback" not in result.output
    new_id = result.out.strip().removeprefix("SST_VAULT_KEY_ID=")
    assert result.out == f"SST_VAULT_KEY_ID={new_id}\n" and new_id != old_id
    # It says plainly what bob can still read and what to rotate.
    assert "history still opens for bob" in result.err
    assert "SST passphrase of every stage (dev, prod)" in result.err
    assert "`sst secret` value of prod" in result.err
    assert "SST_VAULT_PIN stays" in result.err

    # One commit: every stage's files, the new wrapped key and the signed record; nothing else.
    changed = set(ci.git("show", "--name-only", "--format=", "HEAD").split())
    assert changed == {
        "infra/state/key-record.jsonl",
        "infra/state/data-key.age",
        *(f"infra/state/{k}/prod.json.vault" for k in ("app", "passphrase", "secret")),
        *(f"infra/state/{k}/dev.json.vault" for k in ("app", "passphrase")),
    }
    assert ci.git("status", "--porcelain") == ""
    assert "bob" not in (ci.root / "sst-vault.toml").read_text()
    for stage in ("prod", "dev"):
        h = vault_header(ci.vault_file("app", stage))
        assert h["serial"] == serials[stage] + 1 and h["key_id"] == new_id
    # The rotating home is still in sync; CI and alice open the re-sealed files.
    status = ci.cli("status", "--json")
    assert {r["state"] for r in json.loads(status.out)} == {"in sync"}, status.output
    assert key_id(ci) == key_id(alice) == new_id
    result = fresh_prepare(alice, "prod", "dev")
    assert result.code == 0, result.output
    assert alice.snapshot_home() == files

    # A deploy after the removal: bob's key opens none of it.
    deploy(ci, "prod", "after-removal")
    assert ci.cli("commit", "prod").code == 0
    bob_home = bob.snapshot_home()
    assert_refused(bob.cli("prepare", "prod", "--force"), 1, "wrong key")
    assert_refused(bob.cli("key", "id"), 1, "wrong key")
    assert bob.snapshot_home() == bob_home
    assert age_decrypt(ci.root / "infra/state/data-key.age", bob.key, tmp_path).returncode != 0
    # ...while history before it still does, as the command warned.
    old_wrapped = tmp_path / "old-data-key.age"
    old_wrapped.write_bytes(
        subprocess.run(
            ["git", "show", f"{before_removal}:infra/state/data-key.age"],
            cwd=ci.root,
            env=ci.env,
            capture_output=True,
            check=True,
        ).stdout
    )
    assert age_decrypt(old_wrapped, bob.key, tmp_path).returncode == 0

    # CI and alice are unaffected.
    for person in (ci, alice):
        result = fresh_prepare(person, "prod", "dev")
        assert result.code == 0, result.output
    assert alice.snapshot_home() == ci.snapshot_home()

    # CI pinned to the old id refuses the new data key; the printed value works.
    assert_refused(ci.cli("prepare", "prod", env=dict(ci.env, SST_VAULT_KEY_ID=old_id)), 1, new_id)
    pinned = dict(ci.env, SST_VAULT_KEY_ID=new_id)
    assert ci.cli("status", env=pinned).code == 0


def test_rotate_age_on_demand_keeps_every_member(vault_project, tmp_path):
    ci = vault_project
    files = deploy_two(ci)
    alice = member(ci, tmp_path, "alice")
    assert ci.cli("recipients", "add", "alice", public_of(alice)).code == 0
    old_id = key_id(ci)
    old_wrapped = (ci.root / "infra/state/data-key.age").read_bytes()

    for person in (ci, alice):
        assert fresh_prepare(person, "prod", "dev").code == 0

    rotated = alice.cli("rotate")
    assert rotated.code == 0, rotated.output
    new_id = rotated.out.strip().removeprefix("SST_VAULT_KEY_ID=")
    assert ci.git("log", "-1", "--format=%s").strip() == (
        f"sst-vault: rotate data key {old_id} -> {new_id}"
    )
    # alice's home stays in sync through her own rotation; she deploys and commits at once.
    deploy(alice, "prod", "after-rotation")
    result = alice.cli("commit", "prod")
    assert result.code == 0, result.output
    # CI's home was synced under the old data key. It still takes the new state without
    # --force (its sync record is checked under the old key, found in git history). The
    # re-sealed files have newer serials than CI synced: never "in sync" until it prepares.
    status = json.loads(ci.cli("status", "--json").out)
    assert {(r["stage"], r["state"]) for r in status} == {
        ("dev", "repo ahead"),
        ("prod", "repo ahead"),
    }, status
    result = ci.cli("prepare", "prod")
    assert result.code == 0, result.output
    assert ci.snapshot_home() == alice.snapshot_home()
    files = ci.snapshot_home()
    assert new_id.startswith("svk1-") and new_id != old_id
    assert "history still opens for the old data key" in rotated.err
    assert (ci.root / "infra/state/data-key.age").read_bytes() != old_wrapped
    assert ci.git("status", "--porcelain") == ""
    for person in (ci, alice):
        assert key_id(person) == new_id
        result = fresh_prepare(person, "prod", "dev")
        assert result.code == 0, result.output
        assert person.snapshot_home() == files


def test_failed_rotation_changes_nothing(vault_project, tmp_path):
    ci = vault_project
    deploy_two(ci)
    repo, commit = ci.snapshot_repo(), head(ci)
    # A tampered file in one stage: the rotation must refuse before replacing anything.
    damaged = ci.vault_file("app", "prod")
    data = bytearray(damaged.read_bytes())
    data[-5] ^= 1
    damaged.write_bytes(bytes(data))
    repo["app/prod.json.vault"] = bytes(data)
    for args in (("rotate",), ("recipients", "remove", "ci")):
        result = ci.cli(*args)
        assert result.code == 1, result.output
        assert "Traceback" not in result.output
    assert_refused(ci.cli("rotate"), 1, "tampered", "app/prod.json.vault")
    assert ci.snapshot_repo() == repo and head(ci) == commit
    assert temp_files(ci.root, ci.home) == []


def test_failed_git_commit_puts_the_whole_rotation_back(vault_project, tmp_path):
    """change.Change: the new files stay revocable until git has them, so a commit that fails
    (here: a signing program that refuses) leaves the vault exactly as it was."""
    ci = vault_project
    files = deploy_two(ci)
    bob = public_of(member(ci, tmp_path, "bob"))
    old_id = key_id(ci)
    was = before(ci)
    ci.git("config", "commit.gpgsign", "true")
    ci.git("config", "gpg.program", "false")
    assert_refused(ci.cli("rotate"), 1, "commit", project=ci, was=was)
    assert_refused(ci.cli("recipients", "add", "bob", bob), 1, "commit", project=ci, was=was)
    ci.git("config", "commit.gpgsign", "false")
    # Every file and the data key went back together: the working tree opens as the old vault.
    assert key_id(ci) == old_id
    result = fresh_prepare(ci, "prod", "dev")
    assert result.code == 0, result.output
    assert ci.snapshot_home() == files


# --- fernet --------------------------------------------------------------------------------


def test_fernet_rotate_moves_every_file_to_the_newest_key(fernet_project, tmp_path):
    project = fernet_project
    old = project.key
    files = deploy_two(project)
    old_id = key_id(project)
    new = new_key(project.env, "fernet")
    both = dict(project.env, SST_VAULT_KEY=f"{new}\n{old}")
    only_new = dict(project.env, SST_VAULT_KEY=new)
    only_old = dict(project.env, SST_VAULT_KEY=old)
    before = head(project)
    serials = {
        p: vault_header(project.root / "infra/state" / p)["serial"] for p in project.snapshot_repo()
    }

    # Only the new key: the files cannot be read, so nothing moves.
    repo = project.snapshot_repo()
    assert_refused(project.cli("rotate", env=only_new), 1, "wrong key", "SST_VAULT_KEY")
    assert project.snapshot_repo() == repo and head(project) == before

    result = project.cli("rotate", env=both)
    assert result.code == 0, result.output
    new_id = result.out.strip().removeprefix("SST_VAULT_KEY_ID=")
    assert new_id != old_id and new_id == key_id(
        VaultProject(project.root, project.home, both, new)
    )
    assert project.git("status", "--porcelain") == ""
    assert (
        commit_count(project)
        == int(git("rev-list", "--count", before, cwd=project.root, env=project.env)) + 1
    )
    for name, data in project.snapshot_repo().items():
        h = vault_header(project.root / "infra/state" / name)
        assert h["key_id"] == new_id and h["serial"] == serials[name] + 1, name
        assert data != repo[name]

    # The new key alone opens the current files; the old one alone opens none of them...
    assert (
        fresh_prepare(VaultProject(project.root, project.home, only_new, new), "prod", "dev").code
        == 0
    )
    assert project.snapshot_home() == files
    shutil.rmtree(project.home)
    assert_refused(project.cli("prepare", "prod", env=only_old), 1, "wrong key")
    # ...but still opens the revision before the rotation.
    old_checkout = tmp_path / "old-checkout"
    git("clone", "-q", str(project.root), str(old_checkout), cwd=tmp_path, env=project.env)
    git("checkout", "-q", before, cwd=old_checkout, env=project.env)
    past = VaultProject(old_checkout, tmp_path / "past-home", only_old, old)
    result = past.cli("prepare", "prod", "dev")
    assert result.code == 0, result.output
    assert past.snapshot_home() == files

    # Nothing left to move: no commit, a hint how to rotate.
    count = commit_count(project)
    result = project.cli("rotate", env=both)
    assert result.code == 0, result.output
    assert "already sealed under the newest key" in result.err
    assert commit_count(project) == count


def test_rotate_needs_a_vault(tmp_path):
    result = make_project(tmp_path).cli("rotate", cwd=tmp_path)
    assert_refused(result, 2, "sst-vault.toml")
