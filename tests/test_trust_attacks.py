"""Issue 8's attacks, played end to end by someone who can push but holds no current key.

The attacker here ("mallory", or "bob" once he is removed) works only with what an attacker has:
git, the real `age` CLI (`age`, `age-keygen`), the sst-vault CLI as a subprocess and, to forge a
key record entry with a data key he kept, a short standalone script that uses `cryptography`
alone and follows SECURITY.md's specification (FORGE_ENTRY below). No test calls the vault
library, on the attacker's side or to check.

Each test asserts two things: the attacker reads nothing (their age key opens no `data-key.age`
a member wrote afterwards, so nothing sealed afterwards opens for them), and every member, CI
and reviewer path refuses with exit code 1 or 2, one `Error:` line naming the file or commit,
no traceback, nothing written to the SST home or the repository. A test marked xfail(strict)
is a hole in vault/: its reason says what goes wrong.

The team (built once, copied per test): `ci` made the vault (its SST home remembers the vault),
`bob` and `carol` were added; prod and dev are committed and pushed to a bare remote.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CLIResult, VaultProject, base_env, git, make_project, needs, new_app_repo
from helpers import add_remote, deploy, tree_state, vault_header, vault_pin

AGE = shutil.which("age")
AGE_KEYGEN = shutil.which("age-keygen")
pytestmark = needs("age", "age-keygen")

STATE = "infra/state"
RECORD = f"{STATE}/key-record.jsonl"
DATA_KEY = f"{STATE}/data-key.age"
MALLORY = {
    "GIT_AUTHOR_NAME": "Mallory",
    "GIT_AUTHOR_EMAIL": "m@evil.example",
    "GIT_COMMITTER_NAME": "Mallory",
    "GIT_COMMITTER_EMAIL": "m@evil.example",
}
MEMBERS = ("ci", "bob", "carol")


# --- age keys, through the age CLI ---------------------------------------------------------


@dataclass(frozen=True)
class AgeKey:
    secret: str
    public: str
    file: Path  # the identity file `age -d -i` reads


def age_key(folder: Path, name: str) -> AgeKey:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.key"
    subprocess.run([AGE_KEYGEN, "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(
        [AGE_KEYGEN, "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    secret = next(ln for ln in path.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-"))
    return AgeKey(secret, public, path)


def age_open(data: bytes, key: AgeKey) -> bytes | None:
    """What `age -d -i KEY` makes of `data`: the plaintext, or None when it does not open."""
    proc = subprocess.run([AGE, "-d", "-i", str(key.file)], input=data, capture_output=True)
    return proc.stdout if proc.returncode == 0 else None


def age_wrap(data: bytes, publics: list[str]) -> bytes:
    args = [AGE, "-a"]
    for public in publics:
        args += ["-r", public]
    return subprocess.run(args, input=data, check=True, capture_output=True).stdout


# --- repositories and people ---------------------------------------------------------------


def show(root: Path, env: dict[str, str], rev: str, path: str) -> bytes | None:
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, env=env, capture_output=True)
    return proc.stdout if proc.returncode == 0 else None


def record_entries(blob: bytes) -> list[dict]:
    return [json.loads(line)["entry"] for line in blob.decode().splitlines()]


@dataclass
class Team:
    """The shared remote and everybody's keys; each person is a VaultProject (repo + home)."""

    base: Path
    remote: Path
    keys: dict[str, AgeKey]
    ci: VaultProject

    def person(self, name: str, repo: Path | None = None, home: str | None = None):
        env = base_env(self.base)
        if name in self.keys:
            env["SST_VAULT_KEY"] = self.keys[name].secret
        home_path = self.base / (home or f"{name}-sst-home")
        secret = self.keys[name].secret if name in self.keys else ""
        return VaultProject(repo or self.ci.root, home_path, env, secret)

    def clone(self, name: str, folder: str, *, key: str | None = None, home: str | None = None):
        """A fresh full clone of the remote with a brand-new SST home (a new machine, CI)."""
        root = self.base / folder
        env = base_env(self.base)
        git("clone", "-q", str(self.remote), str(root), cwd=self.base, env=env)
        return self.person(key or name, root, home or f"{folder}-sst-home")


def attacker_clone(team: Team, folder: str = "mallory-repo") -> VaultProject:
    person = team.clone("mallory", folder)
    person.env.update(MALLORY)
    person.env.pop("SST_VAULT_KEY", None)
    return person


def attacker_push(person: VaultProject, message: str = "chore: bump dependencies") -> str:
    git("add", "-A", cwd=person.root, env=person.env)
    git("commit", "-q", "--no-verify", "-m", message, cwd=person.root, env=person.env)
    git("push", "-q", "origin", "HEAD:main", cwd=person.root, env=person.env)
    return git("rev-parse", "HEAD", cwd=person.root, env=person.env).strip()


def pull(person: VaultProject) -> None:
    git("pull", "-q", "--no-rebase", "origin", "main", cwd=person.root, env=person.env)


def ok(person: VaultProject, *args: str, env: dict[str, str] | None = None) -> CLIResult:
    result = person.cli(*args, env=env)
    assert result.code == 0, (args, result.output)
    assert "Traceback" not in result.output
    return result


def repo_state(root: Path, env: dict[str, str]) -> tuple[str, str, dict]:
    head = git("rev-parse", "HEAD", cwd=root, env=env).strip()
    status = git("status", "--porcelain", "--untracked-files=all", cwd=root, env=env)
    return head, status, tree_state(root / STATE)


def home_state(home: Path) -> dict:
    """Every file of an SST home but the empty `flock` file (SECURITY.md: "Local files")."""
    if not home.exists():
        return {}
    found = tree_state(home)
    if found.get(".sst-vault/lock", (b"",))[0] == b"":
        found.pop(".sst-vault/lock", None)
    return found


def refused(
    person: VaultProject,
    *args: str,
    names: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    genuine: str | None = None,
) -> str:
    """Run a member/CI/reviewer command that must refuse: exit 1 or 2, one `Error:` line naming
    `names` (a file or a commit), no traceback, nothing written to the SST home or the repo.

    `genuine`: the real vault identity, when the record is genuine and only something after it
    is refused; remembering that record (the trust memory) is then allowed."""
    home_before = home_state(person.home)
    repo_before = repo_state(person.root, person.env)
    result = person.cli(*args, env=env)
    assert result.code in (1, 2), (args, result.output)
    assert "Traceback" not in result.output, result.output
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.output)
    for name in names:
        assert name in lines[0], (name, lines[0])
    after = home_state(person.home)
    memory = after.get(f".sst-vault/trust/{person.app}.json")
    if genuine and memory and json.loads(memory[0])["identity"] == genuine:
        after.pop(f".sst-vault/trust/{person.app}.json")
        home_before.pop(f".sst-vault/trust/{person.app}.json", None)
    assert after == home_before, f"{args} wrote to the SST home"
    assert repo_state(person.root, person.env) == repo_before, f"{args} changed the repo"
    return lines[0]


def commits_since(person: VaultProject, rev: str) -> list[str]:
    out = git("rev-list", f"{rev}..HEAD", cwd=person.root, env=person.env)
    return out.split()


def assert_locked_out(person: VaultProject, since: str | list[str], *keys: AgeKey) -> None:
    """No `data-key.age` of the commits after `since` (or in a list) opens under any of `keys`;
    every vault file committed then is sealed under the key id the record's newest entry names
    and none of `keys` is a recipient there."""
    commits = commits_since(person, since) if isinstance(since, str) else since
    assert commits, "the member committed nothing after the attack"
    for commit in commits:
        wrapped = show(person.root, person.env, commit, DATA_KEY)
        assert wrapped is not None, commit
        for key in keys:
            assert age_open(wrapped, key) is None, f"{key.public} opens {DATA_KEY} at {commit}"
        newest = record_entries(show(person.root, person.env, commit, RECORD))[-1]
        names = git("ls-tree", "-r", "--name-only", commit, STATE, cwd=person.root, env=person.env)
        for name in names.split():
            if name.endswith(".vault"):
                blob = show(person.root, person.env, commit, name)
                assert vault_header(blob)["key_id"] == newest["key_id"], (commit, name)
        for key in keys:
            assert key.public not in newest["recipients"].values(), commit


@pytest.fixture(scope="module")
def template() -> Team:
    """ci inits the vault, adds bob and carol, commits prod and dev, pushes to a bare remote."""
    base = Path(tempfile.mkdtemp(prefix="sst-vault-attacks-"))
    try:
        keys = {name: age_key(base / "keys", name) for name in (*MEMBERS, "mallory", "dave")}
        ci = make_project(base, name="ci-repo", key=keys["ci"].secret)
        ci.home = base / "ci-sst-home"
        if (base / "ci-repo-sst-home").exists():  # init's home, under make_project's name
            shutil.move(str(base / "ci-repo-sst-home"), str(ci.home))
        for name in ("bob", "carol"):
            ok(ci, "recipients", "add", name, keys[name].public)
        deploy(ci, "prod", "p1", secrets={"ApiKey": "prod-secret"})
        deploy(ci, "dev", "d1")
        ok(ci, "commit", "--all")
        remote = base / "remote.git"
        git("init", "-q", "--bare", str(remote), cwd=base, env=ci.env)
        ci.git("remote", "add", "origin", str(remote))
        ci.git("push", "-q", "-u", "origin", "HEAD:main")
        yield Team(base, remote, keys, ci)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def team(template: Team, tmp_path: Path) -> Team:
    """A private copy of the template: repos, remote, SST homes and keys under tmp_path."""
    for item in template.base.iterdir():
        target = tmp_path / item.name
        if item.is_dir():
            shutil.copytree(item, target, symlinks=True)
        else:
            shutil.copy2(item, target)
    keys = {
        n: AgeKey(k.secret, k.public, tmp_path / "keys" / k.file.name)
        for n, k in template.keys.items()
    }
    new = Team(tmp_path, tmp_path / "remote.git", keys, template.ci)
    new.ci = new.person("ci", tmp_path / "ci-repo")
    new.ci.git("remote", "set-url", "origin", str(new.remote))
    return new


# --- 1. recipient injection through sst-vault.toml --------------------------------------------


def test_recipient_injected_in_toml_never_gets_the_data_key(team: Team):
    """mallory adds `[recipients] mallory = <her key>` (and `ci = <her key>`, a member's name)
    to sst-vault.toml and pushes. Every later add, remove, rotate and commit by a member
    wraps and seals only to the signed record's recipients: her age key opens nothing."""
    mallory = attacker_clone(team)
    evil = team.keys["mallory"]
    toml = mallory.root / "sst-vault.toml"
    toml.write_text(
        toml.read_text() + f'\n[recipients]\nmallory = "{evil.public}"\nci = "{evil.public}"\n'
    )
    attack = attacker_push(mallory)

    ci = team.ci
    pull(ci)
    listed = ok(ci, "recipients", "list").out
    assert evil.public not in listed and "mallory" not in listed
    assert {line.split()[0] for line in listed.splitlines()} == set(MEMBERS)

    ok(ci, "recipients", "add", "dave", team.keys["dave"].public)
    ok(ci, "rotate")
    ok(ci, "recipients", "remove", "dave")
    deploy(ci, "prod", "p2", secrets={"ApiKey": "prod-secret-2"})
    ok(ci, "commit", "prod")
    assert_locked_out(ci, attack, evil)
    # The attacker's key, given to the CLI on a fresh machine, is not a recipient either.
    mallory.env["SST_VAULT_KEY"] = evil.secret
    pull(mallory)
    refused(mallory, "prepare", "prod", names=(DATA_KEY,))


def test_swapped_names_in_toml_remove_the_signed_key_of_that_name(team: Team):
    """bob, about to be removed, swaps his and carol's names in the toml. `recipients remove bob`
    removes the key the signed record calls bob: carol still opens the vault, bob does not."""
    bob_repo = team.clone("bob", "bob-repo")
    keys = team.keys
    toml = bob_repo.root / "sst-vault.toml"
    toml.write_text(
        toml.read_text()
        + f'\n[recipients]\nbob = "{keys["carol"].public}"\ncarol = "{keys["bob"].public}"\n'
        + f'ci = "{keys["ci"].public}"\n'
    )
    attack = attacker_push(bob_repo, "tidy recipients")

    ci = team.ci
    pull(ci)
    ok(ci, "recipients", "remove", "bob")
    listed = ok(ci, "recipients", "list").out
    assert keys["carol"].public in listed and keys["bob"].public not in listed
    wrapped = (ci.root / DATA_KEY).read_bytes()
    assert age_open(wrapped, keys["carol"]) is not None
    assert age_open(wrapped, keys["bob"]) is None
    assert_locked_out(ci, attack, keys["bob"])
    carol = team.clone("carol", "carol-repo")
    ok(carol, "prepare", "prod")


def test_recipient_injected_in_the_record_breaks_its_signature(team: Team):
    """mallory adds herself to the newest entry's recipients in key-record.jsonl (and wraps
    nothing: she has no data key). The entry's signatures no longer verify: every member
    command refuses naming the record; a fresh clone with the pin too."""
    pin = vault_pin(team.ci)
    mallory = attacker_clone(team)
    path = mallory.root / RECORD
    lines = path.read_text().splitlines()
    last = json.loads(lines[-1])
    last["entry"]["recipients"]["mallory"] = team.keys["mallory"].public
    lines[-1] = json.dumps(last, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    attacker_push(mallory)
    ci = team.ci
    pull(ci)
    line = refused(ci, "recipients", "add", "dave", team.keys["dave"].public, names=(RECORD,))
    assert "signature" in line
    refused(ci, "rotate", names=(RECORD,))
    fresh = team.clone("ci", "ci-fresh")
    refused(fresh, "prepare", "prod", env=dict(fresh.env, SST_VAULT_PIN=pin), names=(RECORD,))


# --- 2. data key swap -------------------------------------------------------------------------


def test_swapped_data_key_is_refused_pinned_or_not(team: Team):
    """mallory wraps a data key of her own with `age -r` to every recipient of the (public)
    record plus herself, and replaces data-key.age. Nothing a member, CI or a fresh clone runs
    accepts it, with or without SST_VAULT_PIN; nothing is ever sealed under her key."""
    ci = team.ci
    pin = vault_pin(ci)
    key_id = record_entries((ci.root / RECORD).read_bytes())[-1]["key_id"]
    mallory = attacker_clone(team)
    evil = team.keys["mallory"]
    recipients = record_entries((mallory.root / RECORD).read_bytes())[-1]["recipients"]
    assert set(recipients) == set(MEMBERS)
    forged_key = os.urandom(32)
    (mallory.root / DATA_KEY).write_bytes(age_wrap(forged_key, [*recipients.values(), evil.public]))
    toml = mallory.root / "sst-vault.toml"  # a new keyring entry name for the swapped vault
    toml.write_text(re.sub(r'vault_id = "\w+"', 'vault_id = "0123456789abcdef"', toml.read_text()))
    attack = attacker_push(mallory)

    pull(ci)
    deploy(ci, "prod", "p2")
    for args in (
        ("commit", "prod"),
        ("prepare", "prod"),
        ("rotate",),
        ("diff", "prod"),
        ("run", "--stage", "prod", "--no-push", "--no-lock", "--", "true"),
    ):
        refused(ci, *args, names=(DATA_KEY,))
    refused(ci, "commit", "prod", env=dict(ci.env, SST_VAULT_PIN=pin), names=(DATA_KEY,))

    # CI and a member on a new machine: fresh clones, pinned or not.
    fresh = team.clone("ci", "ci-fresh")
    refused(fresh, "prepare", "prod", names=(DATA_KEY,))
    # A keyring user importing her key checks it against the verified record first.
    carol = team.clone("carol", "carol-repo")
    carol.env.pop("SST_VAULT_KEY")
    refused(carol, "key", "import", "--file", str(team.keys["carol"].file), names=(DATA_KEY,))
    pinned = dict(fresh.env, SST_VAULT_PIN=pin)
    refused(
        fresh, "run", "--stage", "prod", "--no-lock", "--", "true", env=pinned, names=(DATA_KEY,)
    )

    # A member restores the file from git; everything after that stays out of mallory's reach.
    ci.git("checkout", f"{attack}~1", "--", DATA_KEY)
    ci.git("commit", "-q", "-m", "restore the data key", "--", DATA_KEY)
    ok(ci, "commit", "prod")
    assert_locked_out(ci, attack, evil)
    newest = record_entries((ci.root / RECORD).read_bytes())[-1]["key_id"]
    assert newest == key_id  # the genuine data key, never one mallory knows


def swap_data_key(team: Team) -> None:
    mallory = attacker_clone(team)
    recipients = record_entries((mallory.root / RECORD).read_bytes())[-1]["recipients"]
    publics = [*recipients.values(), team.keys["mallory"].public]
    (mallory.root / DATA_KEY).write_bytes(age_wrap(os.urandom(32), publics))
    attacker_push(mallory)


def test_review_commands_name_the_swapped_data_key(team: Team):
    """Nothing forged is shown either way; but a member reviewing a tampered vault must be told
    which file is wrong, not that every vault file is damaged, nor nothing at all."""
    swap_data_key(team)
    ci = team.ci
    pull(ci)
    refused(ci, "status", "--verify", names=(DATA_KEY,))
    log = ci.cli("log", "prod")
    assert DATA_KEY in log.err, log.output


@pytest.mark.parametrize("variable", ["SST_VAULT_PIN", "SST_VAULT_KEY_ID"])
def test_pin_variable_set_but_empty_is_an_error(team: Team, variable: str):
    """What an undefined CI variable expands to is an error (exit 2), never "no pin"."""
    ci = team.ci
    env = dict(ci.env, **{variable: ""})
    line = refused(ci, "prepare", "prod", env=env, names=(variable, "empty"))
    assert ci.cli("commit", "prod", env=dict(ci.env, **{variable: " "})).code == 2, line
    if variable == "SST_VAULT_PIN":  # SST_VAULT_KEY_ID under `run`: see the xfail test below
        refused(ci, "run", "--stage", "prod", "--no-lock", "--", "true", env=env, names=(variable,))


# --- 3. whole-vault replacement -----------------------------------------------------------------


def replace_whole_vault(team: Team) -> str:
    """mallory runs her own `sst-vault init` over the real vault in her clone: a new record and
    data key wrapped to the real members' public keys and her own, her own prod state sealed
    under it; the real files are gone. Returns the commit that changed the record."""
    mallory = attacker_clone(team)
    mallory.env["SST_VAULT_KEY"] = team.keys["mallory"].secret
    git("rm", "-r", "-q", STATE, "sst-vault.toml", cwd=mallory.root, env=mallory.env)
    others = [f"--recipient={n}={team.keys[n].public}" for n in MEMBERS]
    ok(mallory, "init", "--no-keyring", "--name", "mallory", *others)
    deploy(mallory, "prod", "MALLORY-FORGED")
    ok(mallory, "commit", "prod")
    attacker_push(mallory, "sst-vault: commit prod")
    changed = git("log", "-1", "--format=%H", "--", RECORD, cwd=mallory.root, env=mallory.env)
    return changed.strip()


def test_whole_vault_replacement_is_refused_where_the_vault_is_known(team: Team):
    """A machine that used the vault names the commit that changed its identity and refuses
    until `key trust`; CI with SST_VAULT_PIN refuses on a fresh clone. (A fresh clone with
    neither memory nor pin: see the next test.)"""
    ci = team.ci
    pin = vault_pin(ci)
    changed = replace_whole_vault(team)
    pull(ci)
    deploy(ci, "prod", "p2")
    refused(ci, "prepare", "prod", names=(changed[:12],))
    refused(ci, "commit", "prod", names=(changed[:12],))
    review = ci.cli("key", "trust")  # no terminal: shows the change, asks, is not confirmed
    assert review.code in (1, 2) and changed[:12] in review.out, review.output
    fresh = team.clone("ci", "ci-fresh")
    pinned = dict(fresh.env, SST_VAULT_PIN=pin)
    refused(fresh, "prepare", "prod", env=pinned, names=("SST_VAULT_PIN",))
    refused(fresh, "run", "--stage", "prod", "--no-lock", "--", "true", env=pinned, names=("PIN",))
    # The attack is real (her key opens the data key she put there) and nothing was sealed.
    assert age_open((ci.root / DATA_KEY).read_bytes(), team.keys["mallory"]) is not None
    assert commits_since(ci, "origin/main") == []


def test_whole_vault_replacement_is_refused_by_a_fresh_full_clone(team: Team):
    """Observed: a fresh full clone with neither SST_VAULT_PIN nor memory trusts the replaced
    vault on first use (the history check ignores records of another identity), prepares the
    attacker's state and seals the member's next commit to her. SECURITY.md ("What a pin adds")
    says the git history check refuses a replacement that came after the real record."""
    replace_whole_vault(team)
    carol = team.clone("carol", "carol-new-machine")
    refused(carol, "prepare", "prod", names=(RECORD,))


# --- 4. rollback of the record by a removed member ----------------------------------------------


def remove_bob(team: Team) -> str:
    ci = team.ci
    ok(ci, "recipients", "remove", "bob")
    ci.git("push", "-q", "origin", "HEAD:main")
    return ci.git("rev-parse", "HEAD").strip()


def test_removed_member_cannot_roll_the_record_back(team: Team):
    """bob keeps his key, is removed (a rotation), and reverts the record, data-key.age and the
    vault files to the commit before his removal. Every machine that saw the removal and every
    full clone refuses; bob's key opens nothing the members commit afterwards."""
    pin = vault_pin(team.ci)
    bob = team.clone("bob", "bob-repo")
    removal = remove_bob(team)
    pull(bob)
    bob.git("checkout", f"{removal}~1", "--", STATE)
    attack = attacker_push(bob, "revert: broken rotation")
    assert age_open((bob.root / DATA_KEY).read_bytes(), team.keys["bob"]) is not None

    ci = team.ci
    pull(ci)
    deploy(ci, "prod", "p2")
    refused(ci, "commit", "prod", names=(RECORD,))
    refused(ci, "run", "--stage", "prod", "--no-lock", "--", "true", names=(RECORD,))
    refused(ci, "key", "trust", "--yes", names=(RECORD,))  # never accepts a rollback
    carol = team.clone("carol", "carol-new-machine")
    refused(carol, "prepare", "prod", names=(RECORD, removal[:12]))
    shallow_root = team.base / "ci-shallow"
    git("clone", "-q", "--depth", "1", f"file://{team.remote}", str(shallow_root), cwd=team.base)
    shallow = team.person("ci", shallow_root, "ci-shallow-home")
    newest = record_entries(show(ci.root, ci.env, removal, RECORD))[-1]["key_id"]
    exact = dict(shallow.env, SST_VAULT_PIN=pin, SST_VAULT_KEY_ID=newest)
    refused(shallow, "prepare", "prod", env=exact, names=("SST_VAULT_KEY_ID",))

    # The members put the removal back; bob opens nothing they commit from then on.
    ci.git("checkout", removal, "--", STATE)
    ci.git("commit", "-q", "-m", "restore the key record", "--", STATE)
    ok(ci, "commit", "prod")
    assert_locked_out(ci, attack, team.keys["bob"])


def test_run_keeps_the_exact_key_pin_on_a_shallow_clone(team: Team):
    """SECURITY.md: CI with a shallow clone relies on the pins ("or pin SST_VAULT_KEY_ID").
    After bob's rollback, CI's `run` on a shallow clone pinned to the newest data key must
    refuse, as `prepare` does, rather than deploy and seal under the data key bob knows."""
    pin = vault_pin(team.ci)
    bob = team.clone("bob", "bob-repo")
    removal = remove_bob(team)
    newest = record_entries(show(team.ci.root, team.ci.env, removal, RECORD))[-1]["key_id"]
    pull(bob)
    bob.git("checkout", f"{removal}~1", "--", STATE)
    attacker_push(bob, "revert: broken rotation")
    shallow_root = team.base / "ci-shallow"
    git("clone", "-q", "--depth", "1", f"file://{team.remote}", str(shallow_root), cwd=team.base)
    ci = team.person("ci", shallow_root, "ci-shallow-home")
    env = dict(ci.env, SST_VAULT_PIN=pin, SST_VAULT_KEY_ID=newest)
    refused(ci, "prepare", "prod", env=env, names=("SST_VAULT_KEY_ID",))
    refused(ci, "run", "--stage", "prod", "--no-lock", "--no-push", "--", "true", env=env)
    refused(
        ci, "run", "--stage", "prod", "--no-lock", "--", "true", env=dict(env, SST_VAULT_KEY_ID="")
    )


def test_removed_member_cannot_roll_back_by_moving_the_state_dir(team: Team):
    """bob's rollback again, but moved to another state_dir with a one-line toml change, so
    that `git log -- <state_dir>/key-record.jsonl` no longer reaches the removal."""
    pin = vault_pin(team.ci)
    bob = team.clone("bob", "bob-repo")
    removal = remove_bob(team)
    pull(bob)
    bob.git("checkout", f"{removal}~1", "--", STATE)
    bob.git("mv", STATE, "infra/old")
    toml = bob.root / "sst-vault.toml"
    toml.write_text(toml.read_text().replace(f'"{STATE}"', '"infra/old"'))
    attacker_push(bob, "move the vault")
    pull(team.ci)
    refused(team.ci, "prepare", "prod", names=("infra/old/key-record.jsonl",))  # memory
    fresh = team.clone("ci", "ci-fresh")
    env = dict(fresh.env, SST_VAULT_PIN=pin)
    refused(fresh, "run", "--stage", "prod", "--no-lock", "--no-push", "--", "true", env=env)


# --- 5. fork by a removed member -------------------------------------------------------------

# The attacker's tool: SECURITY.md's key record specification and `cryptography`, nothing else.
# argv: old record, old data key (raw), recipients JSON, supersedes JSON, out record, out key.
FORGE_ENTRY = r"""
import hashlib, json, os, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

def hkdf(key, info):
    return HKDF(SHA256(), 32, None, info).derive(key)

def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

def signer(key):
    return Ed25519PrivateKey.from_private_bytes(hkdf(key, b"sst-vault/2 signing key"))

def key_id(key):
    return "svk1-" + hkdf(key, b"sst-vault/1 key id")[:16].hex()

old_record, old_key, recipients, supersedes, out_record, out_key = sys.argv[1:]
text = open(old_record, "rb").read()
last = json.loads(text.splitlines()[-1])["entry"]
old = open(old_key, "rb").read()
new = os.urandom(32)
nonce = os.urandom(12)
sealed = ChaCha20Poly1305(hkdf(new, b"sst-vault/2 key history")).encrypt(
    nonce, old, f"{key_id(old)}>{key_id(new)}".encode())
public = signer(new).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
entry = {
    "v": 1, "seq": last["seq"] + 1, "prev": hashlib.sha256(canonical(last)).hexdigest(),
    "app": last["app"], "key_id": key_id(new), "signing_key": public,
    "recipients": json.loads(recipients), "previous_key": (nonce + sealed).hex(),
    "supersedes": json.loads(supersedes), "by": "ci@runner", "time": last["time"],
}
context = b"sst-vault key record v1\x00" + canonical(entry)
line = {"entry": entry, "sig_prev": signer(old).sign(context).hex(),
        "sig_self": signer(new).sign(context).hex()}
open(out_record, "wb").write(text + canonical(line) + b"\n")
open(out_key, "wb").write(new)
"""


def entry_hash(entry: dict) -> str:
    import hashlib

    canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def fork_record(team: Team, *, supersede_removal: bool) -> tuple[str, str]:
    """bob, removed, opens the data key he kept (`age -d` of the data-key.age before his
    removal), signs a new entry after the last one he knew with the tool above (a new data key,
    every member and himself as recipients) and wraps the new data key with `age -r`.
    Returns the removal commit and his commit."""
    bob = team.clone("bob", "bob-repo")
    removal = remove_bob(team)
    pull(bob)
    work = team.base / "bob-tools"
    work.mkdir()
    before = f"{removal}~1"
    (work / "old-record").write_bytes(show(bob.root, bob.env, before, RECORD))
    old_key = age_open(show(bob.root, bob.env, before, DATA_KEY), team.keys["bob"])
    assert old_key is not None and len(old_key) == 32
    (work / "old-key").write_bytes(old_key)
    recipients = {n: team.keys[n].public for n in MEMBERS}
    real = record_entries(show(bob.root, bob.env, removal, RECORD))[-1]
    supersedes = [entry_hash(real)] if supersede_removal else []
    (work / "tool.py").write_text(FORGE_ENTRY)
    subprocess.run(
        [sys.executable, str(work / "tool.py"), str(work / "old-record"), str(work / "old-key"),
         json.dumps(recipients), json.dumps(supersedes), str(bob.root / RECORD),
         str(work / "new-key")],
        check=True, capture_output=True, cwd=work,
    )  # fmt: skip
    new_key = (work / "new-key").read_bytes()
    (bob.root / DATA_KEY).write_bytes(age_wrap(new_key, list(recipients.values())))
    attack = attacker_push(bob, "sst-vault: rotate data key")
    return removal, attack


def test_removed_member_cannot_fork_the_record(team: Team):
    """bob's forged entry is signed correctly by the data key before his removal. The machine
    that saw the removal refuses it (fork at the remembered entry), and so does a fresh full
    clone (the removal's record is in history and the fork does not continue it)."""
    pin = vault_pin(team.ci)
    removal, attack = fork_record(team, supersede_removal=False)
    ci = team.ci
    pull(ci)
    deploy(ci, "prod", "p2")
    refused(ci, "commit", "prod", names=(RECORD,))
    refused(ci, "recipients", "list", names=(RECORD,))
    refused(ci, "key", "trust", "--yes", names=(RECORD,))  # never accepts a fork
    carol = team.clone("carol", "carol-new-machine")
    refused(carol, "prepare", "prod", names=(RECORD, removal[:12]))
    fresh = team.clone("ci", "ci-fresh")
    pinned = dict(fresh.env, SST_VAULT_PIN=pin)
    refused(fresh, "run", "--stage", "dev", "--no-lock", "--", "true", env=pinned, names=(RECORD,))
    assert commits_since(ci, attack) == []


def test_removed_member_cannot_fork_by_superseding_his_removal(team: Team):
    """The same fork, with the real removal entry's hash in the forged entry's `supersedes`
    (the field meant for abandoned forks a member reviewed). CI's fresh full clone, pinned by
    identity, must still refuse: nothing authenticates that a *member* superseded it."""
    pin = vault_pin(team.ci)
    fork_record(team, supersede_removal=True)
    pull(team.ci)
    refused(team.ci, "prepare", "prod", names=(RECORD,))  # memory still refuses
    fresh = team.clone("ci", "ci-fresh")
    env = dict(fresh.env, SST_VAULT_PIN=pin)
    deploy(fresh, "staging", "s1", secrets={"DbPassword": "hunter2"})
    refused(fresh, "commit", "staging", env=env, names=(RECORD,))


# --- 6. deleting the key record (a downgrade to an unsigned vault) -------------------------------


def delete_record(team: Team, toml_recipients: dict[str, str] | None = None) -> str:
    mallory = attacker_clone(team)
    git("rm", "-q", RECORD, cwd=mallory.root, env=mallory.env)
    if toml_recipients:
        lines = "".join(f'{n} = "{p}"\n' for n, p in toml_recipients.items())
        toml = mallory.root / "sst-vault.toml"
        toml.write_text(toml.read_text() + "\n[recipients]\n" + lines)
    return attacker_push(mallory, "remove generated file")


def test_deleted_record_is_refused(team: Team):
    """Without the record the vault would look like one made by 0.1, whose recipients were
    whatever the toml said. A machine that used the vault and a fresh full clone refuse."""
    pin = vault_pin(team.ci)
    delete_record(team)
    ci = team.ci
    pull(ci)
    deploy(ci, "prod", "p2")
    refused(ci, "commit", "prod", names=(RECORD,))
    refused(ci, "recipients", "add", "dave", team.keys["dave"].public, names=(RECORD,))
    carol = team.clone("carol", "carol-new-machine")
    line = refused(carol, "prepare", "prod", names=(RECORD,))
    assert "deleted" in line
    fresh = team.clone("ci", "ci-fresh")
    env = dict(fresh.env, SST_VAULT_PIN=pin)
    refused(fresh, "run", "--stage", "prod", "--no-lock", "--", "true", env=env, names=(RECORD,))


def test_upgrade_refuses_a_record_deleted_by_a_writer(team: Team):
    """mallory deletes the record and adds 0.1-style `[recipients]` to the toml, giving bob's
    name her own key. `key upgrade` is what 0.1 vaults need; on a machine that used the signed
    vault or on a full clone, whose history has the record, it must refuse."""
    keys = team.keys
    injected = {
        "ci": keys["ci"].public,
        "bob": keys["mallory"].public,
        "carol": keys["carol"].public,
    }
    attack = delete_record(team, injected)
    ci = team.ci
    pull(ci)
    try:
        refused(ci, "key", "upgrade", "--yes", names=(RECORD,))
        carol = team.clone("carol", "carol-new-machine")
        refused(carol, "key", "upgrade", "--yes", names=(RECORD,))
    finally:
        # Whatever the upgrade did, the wrapped data key must not open for mallory.
        after = commits_since(ci, attack)
        if after:
            assert_locked_out(ci, after, keys["mallory"])
        wrapped = show(ci.root, ci.env, attack, DATA_KEY)
        assert wrapped is None or age_open(wrapped, keys["mallory"]) is None


# --- 7. history forgery -----------------------------------------------------------------------

FORGED = "MALLORY-FORGED-STATE"


def forge_history(team: Team) -> tuple[str, str]:
    """mallory commits a whole vault of her own (record, data key, prod files under her key,
    with a marker in state and secrets), then restores the real files in the next commit. Returns
    the commit before her forgery and the forged commit."""
    mallory = attacker_clone(team)
    before = git("rev-parse", "HEAD", cwd=mallory.root, env=mallory.env).strip()
    mallory.env["SST_VAULT_KEY"] = team.keys["mallory"].secret
    git("rm", "-r", "-q", STATE, "sst-vault.toml", cwd=mallory.root, env=mallory.env)
    others = [f"--recipient={n}={team.keys[n].public}" for n in MEMBERS]
    ok(mallory, "init", "--no-keyring", "--name", "mallory", *others)
    deploy(mallory, "prod", FORGED, secrets={"ApiKey": FORGED})
    ok(mallory, "commit", "prod")
    attacker_push(mallory, "sst-vault: commit prod")
    app_file = f"{STATE}/app/prod.json.vault"
    forged = git("log", "-1", "--format=%H", "--", app_file, cwd=mallory.root, env=mallory.env)
    git("checkout", before, "--", STATE, "sst-vault.toml", ".gitattributes", cwd=mallory.root)
    attacker_push(mallory, "sst-vault: commit prod")
    return before, forged.strip()


def test_forged_history_is_never_shown_as_genuine(team: Team):
    """`log`, `diff` and `git log -p` with the diff driver open old versions only under keys of
    the verified chain: the forged commit shows no decrypted content, the real ones do;
    `rollback` to it refuses."""
    ci = team.ci
    before, forged = forge_history(team)
    pull(ci)
    log = ok(ci, "log", "prod")
    assert FORGED not in log.output, log.output
    lines = {line[:12]: line for line in log.out.splitlines()}
    assert "? resources" in lines[forged[:12]], log.out
    assert "? resources" not in lines[before[:12]], log.out

    for rev in (forged, f"{before}..{forged}"):
        result = ci.cli("diff", "prod", rev, "--show-secrets")
        assert FORGED not in result.output and "Traceback" not in result.output, result.output
        assert result.code == 1 and result.out == "", result.output  # it holds a forged file
        assert len(result.err.splitlines()) == 1 and result.err.startswith("Error: ")
        assert forged[:12] in result.err and "wrong key" in result.err, result.err
    refused(ci, "rollback", "prod", "--to", forged, names=(forged[:12],))

    ok(ci, "setup-git")
    env = dict(ci.env, SST_VAULT_SST_HOME=str(ci.home))
    patch = git("log", "-p", "--", f"{STATE}/app/prod.json.vault", cwd=ci.root, env=env)
    assert FORGED not in patch
    sections = {part[:40]: part for part in patch.split("commit ")[1:]}
    assert "+# not decrypted: file: wrong key" in sections[forged], sections[forged]
    assert "+{" in sections[before]  # the genuine versions are decrypted


def seal_under_old_key(team: Team) -> tuple[VaultProject, VaultProject]:
    """bob, removed, rebuilds the vault as it was before his removal in a scratch repo with no
    history (his own CLI trusts it on first use) and seals a forged prod state there under the
    data key he kept. Returns his clone of the real repo and the scratch vault."""
    bob = team.clone("bob", "bob-repo")
    removal = remove_bob(team)
    pull(bob)
    scratch = team.base / "bob-scratch"
    scratch.mkdir()
    git("init", "-q", cwd=scratch, env=bob.env)
    for name in ("sst.config.ts", "sst-vault.toml"):
        shutil.copy2(bob.root / name, scratch / name)
    git("--work-tree", str(scratch), "checkout", f"{removal}~1", "--", STATE, cwd=bob.root)
    git("reset", "-q", "--", STATE, cwd=bob.root, env=bob.env)  # that checkout staged them
    git("checkout", "--", STATE, cwd=bob.root, env=bob.env)
    git("add", "-A", cwd=scratch, env=bob.env)
    git("commit", "-q", "-m", "scratch", cwd=scratch, env=bob.env)
    forger = team.person("bob", scratch, "bob-scratch-home")
    deploy(forger, "prod", FORGED, resources=9, secrets={"ApiKey": FORGED})
    ok(forger, "commit", "prod", "--force")
    return bob, forger


def test_files_under_a_retired_data_key_never_reach_the_sst_home(team: Team):
    """bob commits the prod files he sealed under his old data key on top of the branch (a
    serial ahead, a valid record untouched). prepare, run and rollback open files under the
    newest data key only: every member and CI path refuses them."""
    pin = vault_pin(team.ci)
    bob, forger = seal_under_old_key(team)
    for kind in ("passphrase", "app", "secret"):
        shutil.copy2(forger.vault_file(kind, "prod"), bob.vault_file(kind, "prod"))
    forged = attacker_push(bob, "sst-vault: commit prod")
    ci = team.ci
    pull(ci)
    refused(ci, "prepare", "prod", names=(f"{STATE}/passphrase/prod.json.vault",))
    refused(ci, "rollback", "prod", "--to", forged, names=(forged[:12],))
    fresh = team.clone("ci", "ci-fresh")
    env = dict(fresh.env, SST_VAULT_PIN=pin)
    vault_file = f"{STATE}/passphrase/prod.json.vault"
    refused(
        fresh,
        "run",
        "--stage",
        "prod",
        "--no-lock",
        "--",
        "true",
        env=env,
        genuine=pin,
        names=(vault_file,),
    )


def forge_history_under_old_key(team: Team) -> str:
    """bob commits the prod files he sealed under his old data key (seal_under_old_key) on top
    of the real branch after his removal, and restores the real ones in the next commit. The
    forged commit's id."""
    bob, forger = seal_under_old_key(team)
    real = {k: bob.vault_file(k, "prod").read_bytes() for k in ("passphrase", "app", "secret")}
    for kind in real:
        shutil.copy2(forger.vault_file(kind, "prod"), bob.vault_file(kind, "prod"))
    forged = attacker_push(bob, "sst-vault: commit prod")
    for kind, data in real.items():
        bob.vault_file(kind, "prod").write_bytes(data)
    attacker_push(bob, "sst-vault: commit prod")
    pull(team.ci)
    return forged


def test_review_refuses_history_sealed_under_a_key_retired_before_its_commit(team: Team):
    """The forged commit descends from the rotation that removed bob: `log` and `diff` do not
    show what it holds, and say why."""
    ci = team.ci
    forged = forge_history_under_old_key(team)
    log = ok(ci, "log", "prod")
    lines = {line[:12]: line for line in log.out.splitlines()}
    assert FORGED not in log.output and "? resources" in lines[forged[:12]], log.out
    assert f"not shown, commit {forged[:12]}" in log.err and "retired" in log.err, log.err
    result = ci.cli("diff", "prod", forged, "--show-secrets")
    assert FORGED not in result.output, result.output
    assert result.code == 1 and "retired" in result.err and "Traceback" not in result.err
    # A version from before the rotation, sealed under the same old key, is still shown.
    app = f"{STATE}/app/prod.json.vault"
    # The commit before the rotation that removed bob, sealed under his old key.
    older = ci.git("rev-list", "-n", "1", "--skip", "1", f"{forged}~1", "--", app).strip()
    assert ci.cli("diff", "prod", older).code == 0


def test_removed_member_cannot_forge_history_shown_by_git_log_p(team: Team):
    """git's diff driver gets the forged bytes without their commit: it finds the commits that
    hold them, all after the rotation, and does not decrypt them; older versions it does."""
    ci = team.ci
    forge_history_under_old_key(team)
    ok(ci, "setup-git")
    env = dict(ci.env, SST_VAULT_SST_HOME=str(ci.home))
    patch = git("log", "-p", "--", f"{STATE}/app/prod.json.vault", cwd=ci.root, env=env)
    assert FORGED not in patch
    # The forged blob, as its commit adds it and the next one removes it; nothing else.
    assert patch.count("no commit that holds it is from before that rotation") == 2, patch
    assert patch.count("# not decrypted") == 2 and "sst-vault doctor" not in patch, patch
    assert '"type": "pulumi:pulumi:Stack"' in patch  # the genuine versions, old keys too


def forge_on_a_branch_forked_before_the_removal(
    team: Team, branch: str
) -> tuple[VaultProject, str, str]:
    """bob, removed, checks out `branch` from the commit before the rotation that removed him
    and commits there the prod files he sealed under his old data key (seal_under_old_key).
    Returns (his clone, on that branch; the rotation commit; the forged commit)."""
    bob, forger = seal_under_old_key(team)
    removal = git("log", "-n", "1", "--format=%H", "--", RECORD, cwd=bob.root, env=bob.env).strip()
    git("checkout", "-q", "-b", branch, f"{removal}~1", cwd=bob.root, env=bob.env)
    for kind in ("passphrase", "app", "secret"):
        shutil.copy2(forger.vault_file(kind, "prod"), bob.vault_file(kind, "prod"))
    git("add", "-A", cwd=bob.root, env=bob.env)
    git("commit", "-q", "--no-verify", "-m", "sst-vault: commit prod", cwd=bob.root, env=bob.env)
    return bob, removal, git("rev-parse", "HEAD", cwd=bob.root, env=bob.env).strip()


def test_review_refuses_a_branch_forked_before_the_removal_and_merged_later(team: Team):
    """bob forks a branch from before the rotation that removed him, commits files sealed under
    his old data key there and merges it, keeping main's files: his commit does not descend
    from the rotation, but it is not in its past either. diff refuses it, git's diff driver does
    not decrypt it, and the versions genuinely from before the rotation are still shown."""
    ci = team.ci
    bob, removal, forged = forge_on_a_branch_forked_before_the_removal(team, "old-work")
    git("checkout", "-q", "main", cwd=bob.root, env=bob.env)
    git("merge", "-q", "-s", "ours", "-m", "Merge old-work", "old-work", cwd=bob.root, env=bob.env)
    git("push", "-q", "origin", "HEAD:main", cwd=bob.root, env=bob.env)
    pull(ci)
    # Not a descendant of the rotation: the rule of "after the rotation" alone let this through.
    is_after = ["git", "merge-base", "--is-ancestor", removal, forged]
    assert subprocess.run(is_after, cwd=ci.root, env=ci.env).returncode == 1
    result = ci.cli("diff", "prod", forged, "--show-secrets")
    assert FORGED not in result.output, result.output
    assert result.code == 1 and "retired" in result.err and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    ok(ci, "setup-git")
    env = dict(ci.env, SST_VAULT_SST_HOME=str(ci.home))
    app = f"{STATE}/app/prod.json.vault"
    patch = git("log", "-p", "--all", "--full-history", "--", app, cwd=ci.root, env=env)
    assert FORGED not in patch
    assert "no commit that holds it is from before that rotation" in patch, patch
    assert '"type": "pulumi:pulumi:Stack"' in patch  # the genuine versions, old keys too
    older = ci.git("rev-list", "-n", "1", f"{removal}~1", "--", app).strip()
    assert ci.cli("diff", "prod", older).code == 0


# --- 8. key hygiene -----------------------------------------------------------------------------

# What a hostile deploy command or git hook can see: its environment, and the start-up
# environment of every ancestor (/proc/<pid>/environ, readable by the same user) up to the
# test runner. Appends to the file $SPY_OUT; if $SPY_NEXT is set, writes the next state there.
SPY = r"""#!/bin/sh
out="$SPY_OUT"
{
  echo "== $0 env"
  env
  pid=$$
  while [ "$pid" -gt 1 ] && [ "$pid" != "$SPY_STOP" ]; do
    echo "== environ of $pid"
    tr '\0' '\n' < /proc/$pid/environ
    pid=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$pid/status)
  done
} >> "$out" 2>&1
if [ -n "$SPY_NEXT" ]; then cp "$SPY_NEXT" "$SPY_STATE"; fi
exit 0
"""


def install_spy(team: Team, person: VaultProject) -> tuple[Path, Path]:
    """The spy as `run`'s command and as every git hook of the repo (core.hooksPath)."""
    spy = team.base / "spy.sh"
    spy.write_text(SPY)
    spy.chmod(0o755)
    hooks = team.base / "hooks"
    hooks.mkdir()
    for name in ("reference-transaction", "post-commit", "pre-commit", "post-checkout"):
        (hooks / name).symlink_to(spy)
    person.git("config", "core.hooksPath", str(hooks))
    return spy, team.base / "spy.out"


def test_run_command_and_git_hooks_never_see_the_key(team: Team):
    """The deploy command under `run` (and every git hook sst-vault triggers) finds the key
    neither in its environment nor in any ancestor's /proc/<pid>/environ, with the key given in
    SST_VAULT_KEY or through SST_VAULT_KEY_FILE; the key file's path is hidden too."""
    ci = team.ci
    spy, out = install_spy(team, ci)
    next_home = team.base / "next-home"
    for marker, variable in (("p2", "SST_VAULT_KEY"), ("p3", "SST_VAULT_KEY_FILE")):
        deploy(ci, "prod", marker, home=next_home)
        env = {k: v for k, v in ci.env.items() if k != "SST_VAULT_KEY"}
        env.update(
            SPY_OUT=str(out),
            SPY_STOP=str(os.getpid()),
            SPY_NEXT=str(next_home / "state/app/demo-app/prod.json"),
            SPY_STATE=str(ci.state_file("app", "prod")),
            SST_VAULT_PIN=vault_pin(ci),
        )
        if variable == "SST_VAULT_KEY":
            env["SST_VAULT_KEY"] = ci.key
        else:
            env["SST_VAULT_KEY_FILE"] = str(team.keys["ci"].file)
        before = ci.git("rev-parse", "HEAD").strip()
        result = ci.cli("run", "--stage", "prod", "--no-lock", "--no-push", "--", str(spy), env=env)
        assert result.code == 0, result.output
        assert commits_since(ci, before), "run committed nothing (the hooks did not run)"
        seen = out.read_text()
        assert seen.count("== ") >= 4, seen  # the command and hooks ran, with their ancestors
        assert ci.key not in seen and ci.key.split("1", 1)[1][:12] not in seen
        assert str(team.keys["ci"].file) not in seen
        for line in seen.splitlines():
            assert not line.startswith("SST_VAULT_KEY=") and not line.startswith(
                "SST_VAULT_KEY_FILE="
            ), line
        assert "SPY_STOP" in seen  # the dump did read environments
    # The state the spy wrote was committed: the hooks' env was checked on a real commit.
    assert (ci.home / "state/app/demo-app/prod.json").read_bytes() == (
        next_home / "state/app/demo-app/prod.json"
    ).read_bytes()


def test_plain_commit_hooks_get_no_key_variable(team: Team):
    """`sst-vault commit` does not re-execute itself (only `run` does), but every git child it
    starts gets an environment without SST_VAULT_KEY*: a hook's own environment is clean.

    Observed, not asserted: the hook's grandparent is the sst-vault process itself, whose
    /proc/<pid>/environ still holds SST_VAULT_KEY (no re-exec outside `run`). Hooks are this
    machine's own configuration (out of scope: "a member's machine"), and the command under
    `run` is the only child the issue requires to be kept from /proc."""
    ci = team.ci
    _, out = install_spy(team, ci)
    deploy(ci, "prod", "p2")
    env = dict(ci.env, SPY_OUT=str(out), SPY_STOP=str(os.getpid()))
    ok(ci, "commit", "prod", env=env)
    own = out.read_text().split("== environ of")[0]
    assert "SST_VAULT_KEY" not in own and ci.key not in own, own


def test_secret_key_given_as_a_recipient_is_never_echoed(team: Team):
    """A secret key pasted where a public key belongs is refused, and no part of it (beyond
    the AGE-SECRET-KEY-1 prefix everybody knows) reaches the terminal or a CI log."""
    ci = team.ci
    secret = team.keys["dave"].secret
    body = secret[len("AGE-SECRET-KEY-1") :]
    for args in (
        ("recipients", "add", "dave", secret),
        ("recipients", "add", "dave", secret.lower()),
        ("recipients", "add", "dave", " " + secret + "\n"),
    ):
        line = refused(ci, *args)
        for n in range(len(body) - 3):
            assert body[n : n + 4] not in line.upper(), (body[n : n + 4], line)


# --- 9. fernet: the old key serves history only once pinned ----------------------------------


def fernet_replay(tmp_path: Path) -> tuple[VaultProject, str]:
    """A member rotates to a new Fernet key (SST_VAULT_KEY lists new, then old); someone who
    still holds only the old key puts back the files it sealed, as a commit. Returns CI (a new
    SST home, both keys listed) and the new key's id (its pin)."""
    env = base_env(tmp_path)
    old, new = (base64.urlsafe_b64encode(os.urandom(32)).decode() for _ in range(2))  # Fernet keys
    member = make_project(tmp_path, backend="fernet", key=old, env=env)
    deploy(member, "prod", "p1", secrets={"ApiKey": "s1"})
    ok(member, "commit", "prod")
    before = member.git("rev-parse", "HEAD").strip()
    both = dict(member.env, SST_VAULT_KEY=f"{new}\n{old}")
    ok(member, "rotate", env=both)
    pin = ok(member, "key", "pin", env=dict(member.env, SST_VAULT_KEY=new)).out.strip()
    assert pin.startswith("svk1-")
    add_remote(member, tmp_path)
    member.git("checkout", before, "--", STATE)
    git("commit", "-q", "-m", "fix state", cwd=member.root, env=dict(member.env, **MALLORY))
    member.git("push", "-q", "origin", "HEAD:main")
    return VaultProject(member.root, tmp_path / "ci-home", both, new), pin


def test_fernet_file_under_the_old_key_is_refused_when_pinned(tmp_path: Path):
    """CI pinned to the new key's id refuses the old key's files for prepare and run, though
    it still lists the old key, which keeps serving history."""
    ci, pin = fernet_replay(tmp_path)
    for variable in ("SST_VAULT_PIN", "SST_VAULT_KEY_ID"):
        pinned = dict(ci.env, **{variable: pin})
        refused(ci, "prepare", "prod", env=pinned, names=(f"{STATE}/passphrase/prod.json.vault",))
        if variable == "SST_VAULT_PIN":  # SST_VAULT_KEY_ID under `run`: the xfail test below
            refused(ci, "run", "--stage", "prod", "--no-lock", "--", "true", env=pinned)
    assert ok(ci, "log", "prod", env=dict(ci.env, SST_VAULT_PIN=pin)).out.count("resources") >= 2


def test_fernet_run_keeps_the_exact_key_pin(tmp_path: Path):
    ci, pin = fernet_replay(tmp_path)
    env = dict(ci.env, SST_VAULT_KEY_ID=pin)
    refused(ci, "run", "--stage", "prod", "--no-lock", "--no-push", "--", "true", env=env)


def branch_with_the_rotation_copied_after_the_forgery(team: Team) -> tuple[str, str]:
    """bob forks a branch from before the rotation that removed him, commits files sealed under
    his old data key there, then copies main's whole state folder (the genuine record with the
    rotation entry, data-key.age, the genuine prod files) in the next commit and pushes the
    branch for review. The branch's history never holds the genuine rotation commit: its only
    commit whose record retires bob's key is his own copy, and the forged commit is before it.
    Returns (the forged commit, the branch tip)."""
    bob, _removal, forged = forge_on_a_branch_forked_before_the_removal(team, "fix-typo")
    git("checkout", "main", "--", STATE, cwd=bob.root, env=bob.env)
    git("commit", "-q", "--no-verify", "-m", "sync with main", cwd=bob.root, env=bob.env)
    tip = git("rev-parse", "HEAD", cwd=bob.root, env=bob.env).strip()
    git("push", "-q", "origin", "fix-typo", cwd=bob.root, env=bob.env)
    return forged, tip


def test_review_of_a_branch_that_copies_the_rotation_after_a_forgery(team: Team):
    """A member checks bob's branch out to review it (`gh pr checkout`). Its record is the
    genuine newest one, so every trust check passes; review must still not show the state bob
    sealed under his retired key after his removal."""
    forged, _ = branch_with_the_rotation_copied_after_the_forgery(team)
    ci = team.ci
    ci.git("fetch", "-q", "origin", "fix-typo")
    ci.git("checkout", "-q", "-b", "review-fix-typo", "FETCH_HEAD")
    shown = []  # every review path that showed the forged state
    log = ok(ci, "log", "prod")
    lines = {line[:12]: line for line in log.out.splitlines()}
    if "? resources" not in lines[forged[:12]]:
        shown.append(f"log: {lines[forged[:12]]}")
    result = ci.cli("diff", "prod", forged, "--show-secrets")
    if FORGED in result.output or result.code != 1:
        shown.append(f"diff prod {forged[:12]}: exit {result.code}, forged marker shown")
    result = ci.cli("diff", "prod", f"{forged}~1..{forged}", "--show-secrets")
    if FORGED in result.output or result.code != 1:
        shown.append(f"diff prod A..B: exit {result.code}, forged marker shown")
    ok(ci, "setup-git")
    env = dict(ci.env, SST_VAULT_SST_HOME=str(ci.home))
    patch = git("log", "-p", "--", f"{STATE}/app/prod.json.vault", cwd=ci.root, env=env)
    if FORGED in patch:
        shown.append("git log -p: forged marker shown")
    assert not shown, shown


@pytest.mark.parametrize("show_root", [None, "false"])
def test_shallow_review_of_history_sealed_under_a_retired_key(team: Team, show_root):
    """A fresh shallow clone (CI's `fetch-depth: 2`, pinned) whose history starts after the
    rotation that removed bob: it cannot tell when the key was retired, so it must not show
    what bob sealed under it, whatever the user's git config says about root commits."""
    pin = vault_pin(team.ci)
    forged = forge_history_under_old_key(team)
    root = team.base / "ci-shallow"
    env = base_env(team.base)
    git("clone", "-q", "--depth", "2", f"file://{team.remote}", str(root), cwd=team.base, env=env)
    fresh = team.person("ci", root, "ci-shallow-home")
    fresh.env["SST_VAULT_PIN"] = pin
    if show_root:
        fresh.env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="log.showRoot")
        fresh.env["GIT_CONFIG_VALUE_0"] = show_root
    shown = []
    log = ok(fresh, "log", "prod")
    lines = {line[:12]: line for line in log.out.splitlines()}
    if forged[:12] in lines and "? resources" not in lines[forged[:12]]:
        shown.append(f"log: {lines[forged[:12]]}")
    result = fresh.cli("diff", "prod", forged, "--show-secrets")
    if FORGED in result.output or result.code != 1:
        shown.append(f"diff prod {forged[:12]}: exit {result.code}: {result.output[-300:]}")
    assert not shown, shown


def with_git_config(env: dict[str, str], **settings: str) -> dict[str, str]:
    """`env` with git settings as a user's ~/.gitconfig would give them."""
    env = dict(env, GIT_CONFIG_COUNT=str(len(settings)))
    for n, (name, value) in enumerate(settings.items()):
        env[f"GIT_CONFIG_KEY_{n}"], env[f"GIT_CONFIG_VALUE_{n}"] = name.replace("_", "."), value
    return env


def new_machine_after_bob_rolled_back_the_record(team: Team) -> VaultProject:
    """bob, removed, reverts infra/state to before his removal and pushes; carol then clones
    on a new machine (no memory of the vault): only the record's git history can tell her."""
    bob = team.clone("bob", "bob-repo")
    removal = remove_bob(team)
    pull(bob)
    bob.git("checkout", f"{removal}~1", "--", STATE)
    attacker_push(bob, "revert: broken rotation")
    return team.clone("carol", "carol-new-machine")


def test_a_fresh_clone_with_log_follow_set_still_refuses_a_rolled_back_record(team: Team):
    """`log.follow = true` is a common ~/.gitconfig line. With it, git aborts on the glob
    pathspec that lists the record's versions (git 2.39: "BUG: unsupported magic"): the
    record's history must not then count as empty, or a new machine accepts bob's rollback."""
    carol = new_machine_after_bob_rolled_back_the_record(team)
    env = with_git_config(carol.env, log_follow="true")
    refused(carol, "prepare", "prod", env=env, names=(RECORD,))


def test_a_record_history_that_git_cannot_list_is_never_taken_for_none(team: Team):
    """Whatever makes `git log` fail (here a bad log.date in ~/.gitconfig; git itself works),
    a new machine must not take the record's history for empty and accept bob's rollback."""
    carol = new_machine_after_bob_rolled_back_the_record(team)
    env = with_git_config(carol.env, log_date="bogus")
    result = carol.cli("prepare", "prod", env=env)
    assert result.code in (1, 2) and "Traceback" not in result.output, result.output
    assert len(result.err.splitlines()) == 1 and result.err.startswith("Error: "), result.err
    assert home_state(carol.home) == {}, "prepare wrote to the SST home"


def test_a_vault_in_a_non_ascii_folder_keeps_its_record_history(tmp_path: Path):
    """git quotes a path with non-ASCII bytes in `--name-only` output (core.quotePath's
    default): a vault under such a folder must work, and its record's versions must be found,
    or a new machine accepts bob's rollback of the record as in a vault with no history."""
    state = "infra/\u00e9tat"
    keys = {name: age_key(tmp_path / "keys", name) for name in MEMBERS}
    env = dict(base_env(tmp_path), SST_VAULT_KEY=keys["ci"].secret)
    ci = VaultProject(new_app_repo(tmp_path / "ci-repo", env), tmp_path / "ci-home", env, "")
    ok(ci, "init", "--no-keyring", "--name", "ci", "--state-dir", state)
    for name in ("bob", "carol"):
        ok(ci, "recipients", "add", name, keys[name].public)
    deploy(ci, "prod", "p1")
    ok(ci, "commit", "--all")
    remote = tmp_path / "remote.git"
    git("init", "-q", "--bare", str(remote), cwd=tmp_path, env=env)
    ci.git("remote", "add", "origin", str(remote))
    ci.git("push", "-q", "-u", "origin", "HEAD:main")
    team = Team(tmp_path, remote, keys, ci)
    bob = team.clone("bob", "bob-repo")
    removal = remove_bob(team)
    pull(bob)
    bob.git("checkout", f"{removal}~1", "--", state)
    attacker_push(bob, "revert: broken rotation")
    carol = team.clone("carol", "carol-new-machine")
    refused(carol, "prepare", "prod", names=(f"{state}/key-record.jsonl",))
