"""A developer's key in the real OS keyring: import, export-public, forget; and what a machine
remembers of the vault it trusts (its identity and newest key record entry).

The Secret Service is gnome-keyring on a private D-Bus session (the `secret_service` fixture of
test_keyring.py). CI is the key the vault was made with (`SST_VAULT_KEY`, no keyring); alice is a
developer whose key lives in the keyring, on her own SST home.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import test_keyring
from conftest import VaultProject, make_project, needs, new_key
from helpers import (
    add_remote,
    assert_refused,
    deploy,
    head,
    public_of,
    trusted_of,
    vault_pin,
)
from test_keyring import keyring_entry, keyring_env, new_repo, vault_id

# The module-scoped gnome-keyring on a private D-Bus session, from test_keyring.py.
secret_service = test_keyring.secret_service

pytestmark = pytest.mark.keyring


def secret_of(env: dict[str, str], project: VaultProject) -> str | None:
    return keyring_entry(env, f"vault:{vault_id(project)}")


def pin_of(env: dict[str, str], project: VaultProject) -> str | None:
    """sst-vault 0.1's keyring pin entry: nothing writes it any more."""
    return keyring_entry(env, f"pin:{vault_id(project)}")


def on_terminal(person: VaultProject, answer: str, *args: str) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal, answer its first question; (exit code, all output)."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI, as a developer would start it in a terminal
        os.chdir(person.root)
        os.execvpe(
            sys.executable,
            [sys.executable, "-m", "vault", "--sst-home", str(person.home), *args],
            person.env,
        )
    output, answered = b"", False
    while True:
        ready, _, _ = select.select([fd], [], [], 60)
        if not ready:
            os.kill(pid, 9)
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if not answered and b"[y/N]" in output:
            os.write(fd, answer.encode() + b"\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def fresh_prepare(person: VaultProject, *stages: str):
    if person.home.exists():
        shutil.rmtree(person.home)
    return person.cli("prepare", *stages)


@pytest.fixture
def team(tmp_path, secret_service):
    """(ci, alice): a committed vault made by CI, alice added as a recipient, nothing imported."""
    ci = make_project(tmp_path)
    deploy(ci, "prod", "first", secrets={"Token": "t1"})
    assert ci.cli("commit", "prod").code == 0
    alice_key = new_key(ci.env)
    env = keyring_env(tmp_path, secret_service)
    alice = VaultProject(ci.root, tmp_path / "alice-sst-home", env, alice_key)
    result = ci.cli("recipients", "add", "alice", public_of(ci, alice_key))
    assert result.code == 0, result.output
    return ci, alice


def import_key(person: VaultProject, secret: str | None = None, *args: str):
    return person.cli("key", "import", *args, input=(secret or person.key) + "\n")


# --- import, export-public, forget ---------------------------------------------------------


def test_import_stores_a_checked_key_and_remembers_the_vault(team, tmp_path):
    ci, alice = team
    assert_refused(alice.cli("prepare", "prod"), 2, "key import")

    result = import_key(alice)
    assert result.code == 0, result.output
    assert alice.key not in result.output
    assert secret_of(alice.env, alice) == alice.key
    assert trusted_of(alice)["identity"] == vault_pin(ci)
    assert pin_of(alice.env, alice) is None  # no keyring pin: the memory is a file

    result = fresh_prepare(alice, "prod")  # the key now comes from the keyring
    assert result.code == 0, result.output
    assert alice.snapshot_home() == ci.snapshot_home()

    result = import_key(alice)
    assert result.code == 0, result.output
    assert "already holds this key" in result.err

    # export-public prints what `age-keygen -y` derives from the same secret.
    result = alice.cli("key", "export-public")
    assert result.code == 0, result.output
    expected = subprocess.run(
        ["age-keygen", "-y"], input=alice.key + "\n", text=True, capture_output=True, check=True
    ).stdout.strip()
    assert result.out.strip() == expected
    assert "recipient alice" in result.err and "OS keyring" in result.err

    # forget asks first; without a terminal it needs --yes, and keeps the key meanwhile.
    assert_refused(alice.cli("key", "forget"), 2, "--yes")
    assert secret_of(alice.env, alice) == alice.key
    result = alice.cli("key", "forget", "--yes")
    assert result.code == 0, result.output
    assert secret_of(alice.env, alice) is None
    assert trusted_of(alice) is not None  # not secret: it keeps protecting a later import
    result = alice.cli("key", "forget", "--yes")
    assert result.code == 0, result.output
    assert "nothing to forget" in result.err
    assert_refused(alice.cli("prepare", "prod", "--force"), 2, "key import")

    key_file = tmp_path / "alice.key"
    key_file.write_text(f"# created: today\n# public key: {expected}\n{alice.key}\n")
    result = alice.cli("key", "import", "--file", str(key_file))
    assert result.code == 0, result.output
    assert secret_of(alice.env, alice) == alice.key


def test_import_refusals_store_nothing(team, tmp_path):
    ci, alice = team
    stranger = new_key(ci.env)
    fernet_key = new_key(ci.env, "fernet")
    cases = [
        (stranger, 1, "wrong key"),  # not a recipient: it does not open this vault
        ("hello", 2, "age identity"),
        ("", 2, "stdin is empty"),
        (fernet_key, 2, "fernet key"),
    ]
    for secret, code, words in cases:
        result = alice.cli("key", "import", input=secret)
        line = assert_refused(result, code, words)
        if secret:
            assert secret not in result.output, line
    assert_refused(alice.cli("key", "import", "--file", str(tmp_path / "nope")), 2, "cannot read")
    # A key given as an argument is refused without echoing it back.
    result = alice.cli("key", "import", alice.key)
    assert_refused(result, 2, "no key argument", "stdin")
    assert alice.key not in result.output
    assert secret_of(alice.env, alice) is None and trusted_of(alice) is None

    # A different key already stored is never overwritten silently.
    assert import_key(alice).code == 0
    assert_refused(import_key(alice, ci.key), 1, "different key", "--replace")
    assert secret_of(alice.env, alice) == alice.key
    result = import_key(alice, ci.key, "--replace")
    assert result.code == 0, result.output
    assert secret_of(alice.env, alice) == ci.key


def test_without_keyring_and_for_fernet(tmp_path, env):
    key = new_key(env)
    result = VaultProject(tmp_path, tmp_path / "home", dict(env, SST_VAULT_KEY=key), key).cli(
        "key", "export-public"
    )  # outside any vault: the key from the environment is enough
    assert result.code == 0, result.output
    assert result.out.startswith("age1") and key not in result.output
    fernet = make_project(tmp_path, name="fernet", backend="fernet")
    assert_refused(fernet.cli("key", "export-public"), 2, "Fernet key", "no public part")
    assert_refused(fernet.cli("key", "trust"), 2, "age backend")

    # No keyring backend (conftest's default): each keyring command says what to install.
    project = make_project(tmp_path, name="age")
    no_key = {k: v for k, v in project.env.items() if k != "SST_VAULT_KEY"}
    assert_refused(
        project.cli("key", "import", env=no_key, input=project.key), 2, "keyring", "gnome-keyring"
    )
    assert_refused(project.cli("key", "forget", "--yes", env=no_key), 2, "keyring")
    # A key from the environment needs no keyring to trust a vault: the memory is a file.
    result = project.cli("key", "trust", "--yes")
    assert result.code == 0, result.output
    assert result.out.strip().endswith(f"SST_VAULT_PIN={vault_pin(project)}")


def test_fernet_key_import(tmp_path, secret_service):
    project = make_project(tmp_path, backend="fernet")
    deploy(project, "prod", "f")
    assert project.cli("commit", "prod").code == 0
    env = keyring_env(tmp_path, secret_service)
    dev = VaultProject(project.root, tmp_path / "dev-home", env, project.key)
    assert_refused(import_key(dev, new_key(env, "fernet")), 1, "wrong key")
    result = import_key(dev)
    assert result.code == 0, result.output
    result = fresh_prepare(dev, "prod")
    assert result.code == 0, result.output
    assert pin_of(env, dev) is None  # a Fernet key is the secret itself: nothing to pin


# --- what a machine remembers ------------------------------------------------------------


def test_own_rotation_keeps_the_identity(tmp_path, secret_service):
    env = keyring_env(tmp_path, secret_service)
    project = new_repo(tmp_path, env)
    result = project.cli("init")
    assert result.code == 0, result.output
    pin = result.out.strip().removeprefix("SST_VAULT_PIN=")
    assert pin.startswith("svid1-")
    deploy(project, "prod", "one")
    assert project.cli("commit", "prod").code == 0
    first = trusted_of(project)
    assert first["identity"] == pin

    result = project.cli("rotate")
    assert result.code == 0, result.output
    assert "SST_VAULT_PIN stays" in result.err
    after = trusted_of(project)
    assert after["identity"] == pin and after["seq"] == first["seq"] + 1
    assert vault_pin(project) == pin
    assert fresh_prepare(project, "prod").code == 0


def test_members_follow_a_rotation_but_a_new_identity_needs_trust(team, tmp_path):
    ci, alice = team
    assert import_key(alice).code == 0
    assert fresh_prepare(alice, "prod").code == 0
    old = vault_pin(ci)

    # A member's rotation is a signed entry: alice follows it with nothing to confirm.
    result = ci.cli("rotate")
    assert result.code == 0, result.output
    deploy(ci, "prod", "after-rotation")
    assert ci.cli("commit", "prod").code == 0
    result = alice.cli("prepare", "prod")
    assert result.code == 0, result.output
    assert alice.snapshot_home() == ci.snapshot_home()

    # CI re-creates the vault (a new identity), with alice as a recipient again.
    alice_public = public_of(ci, alice.key)
    for name in ("sst-vault.toml", "infra/state"):
        ci.git("rm", "-rq", name)
    result = ci.cli("init", "--no-keyring", "--recipient", f"alice={alice_public}")
    assert result.code == 0, result.output
    new = result.out.strip().removeprefix("SST_VAULT_PIN=")
    assert new != old
    assert ci.cli("commit", "prod", "--force").code == 0
    # The new vault has a keyring entry of its own: alice stores her key there (it opens the
    # vault), and is told to review the new identity before using it.
    result = import_key(alice)
    assert result.code == 0, result.output
    assert "key trust" in result.err and new in result.err

    home = alice.snapshot_home()
    for args in (("prepare", "prod"), ("commit", "prod")):
        assert_refused(alice.cli(*args), 1, new, old, "sst-vault key trust")
    assert alice.snapshot_home() == home

    result = alice.cli("key", "trust")  # no terminal, no --yes: shows, then refuses
    assert result.code == 2, result.output
    assert f"identity is {new}" in result.out and f"trusted {old}" in result.out
    assert "by Test User" in result.out
    assert result.err.startswith("Error: not confirmed") and "--yes" in result.err
    assert trusted_of(alice)["identity"] == old

    # On a terminal it asks; "no" keeps the old identity, "yes" accepts the new one.
    code, output = on_terminal(alice, "n", "key", "trust")
    assert code == 1 and f"Trust the vault {new}?" in output, output
    assert "Traceback" not in output and trusted_of(alice)["identity"] == old
    code, output = on_terminal(alice, "y", "key", "trust")
    assert code == 0 and f"SST_VAULT_PIN={new}" in output, output
    assert trusted_of(alice)["identity"] == new

    result = alice.cli("key", "trust", "--yes")  # already trusted: says so, changes nothing
    assert result.code == 0 and "already trusts" in result.err, result.output
    result = alice.cli("prepare", "prod", "--force")
    assert result.code == 0, result.output
    assert alice.snapshot_home() == ci.snapshot_home()


@needs("age")
def test_a_forged_data_key_is_refused_pinned_or_not(team, tmp_path):
    """An attacker with push access but no secret: own data key, wrapped to the public keys."""
    ci, alice = team
    assert import_key(alice).code == 0
    assert fresh_prepare(alice, "prod").code == 0
    genuine_home = alice.snapshot_home()
    remembered = trusted_of(alice)

    forged = os.urandom(32)
    pubs = [public_of(ci, ci.key), public_of(ci, alice.key)]
    wrapped = subprocess.run(
        ["age", "-a", *(a for p in pubs for a in ("-r", p))],
        input=forged,
        capture_output=True,
        check=True,
    ).stdout
    (ci.root / "infra/state/data-key.age").write_bytes(wrapped)
    ci.git("add", "-A", "infra/state")
    mallory = dict(ci.env, GIT_AUTHOR_NAME="Mallory", GIT_AUTHOR_EMAIL="m@evil.example")
    subprocess.run(["git", "commit", "-q", "-m", "bump deps"], cwd=ci.root, env=mallory, check=True)
    forged_head = head(ci)

    # The signed key record names another data key: alice, CI unpinned and CI pinned refuse.
    pinned = dict(ci.env, SST_VAULT_PIN=remembered["identity"])
    for person, env in ((alice, alice.env), (ci, ci.env), (ci, pinned)):
        result = person.cli("prepare", "prod", "--force", env=env)
        assert_refused(result, 1, "data-key.age", "key record")
    assert alice.snapshot_home() == genuine_home
    assert_refused(alice.cli("key", "trust", "--yes"), 1, "data-key.age")
    assert trusted_of(alice) == remembered
    assert head(ci) == forged_head


def test_import_for_a_second_vault_of_the_repository_stores_the_key_and_leaves_trust_to_review(
    team, tmp_path
):
    """The repository has alice's first vault; a second one appears in a subfolder (a monorepo,
    or a writer's: the machine cannot tell, `trust.check_place`). `key import` there stores the
    key, says why the vault is not trusted yet, and remembers nothing; `key trust` decides.
    `init` remembers where it made a vault, so its maker's machine knows the place at once."""
    ci, alice = team
    remote = add_remote(ci, tmp_path)
    assert import_key(alice).code == 0
    assert trusted_of(alice)["places"] == [f"{remote.with_suffix('')}#."]
    sub = ci.root / "other"
    sub.mkdir()
    (sub / "sst.config.ts").write_text(
        'export default $config({ app() { return { name: "other", home: "local" }; } });\n'
    )
    made = ci.cli("init", "--no-keyring", cwd=sub)
    assert made.code == 0, made.output
    ci_memory = json.loads((ci.home / ".sst-vault" / "trust" / "other.json").read_text())
    assert ci_memory["places"] == [f"{remote.with_suffix('')}#other"]
    assert ci.cli("recipients", "add", "alice", public_of(ci, alice.key), cwd=sub).code == 0
    result = alice.cli("key", "import", input=alice.key + "\n", cwd=sub)
    assert result.code == 0, result.output
    assert "trusted the vault of app 'demo-app'" in result.err and "key trust" in result.err
    assert not (alice.home / ".sst-vault" / "trust" / "other.json").exists()
    assert alice.cli("key", "trust", "--yes", cwd=sub).code == 0
    assert alice.cli("recipients", "list", cwd=sub).code == 0
