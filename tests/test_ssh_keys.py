"""SSH keys teams already have: `ssh-ed25519 …` recipients and OpenSSH ed25519 private keys as
identities, from SST_VAULT_KEY, SST_VAULT_KEY_FILE and the keyring. Real `ssh-keygen` keys,
the real `age` CLI on the other side, the CLI as a subprocess."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import VaultProject, make_project, needs, new_app_repo
from helpers import assert_refused, before, deploy, wipe_home, without_key
from test_keyring import keyring_env, lookup, secret_service, vault_id  # noqa: F401 (a fixture)

pytestmark = needs("ssh-keygen", "age")


def ssh_keygen(folder: Path, name: str, *, passphrase: str = "", kind: str = "ed25519") -> Path:
    """A private key file made by the real ssh-keygen; its public key is at PATH.pub."""
    path = folder / f"id_{name}"
    args = ["-t", kind] + (["-b", "2048"] if kind == "rsa" else [])
    subprocess.run(
        ["ssh-keygen", "-q", *args, "-N", passphrase, "-C", f"{name}@laptop", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def key_material(path: Path) -> list[str]:
    """Pieces of a private key file that must never be printed (the file holds the public key
    too: pieces that are also in the .pub line may be shown)."""
    public = path.with_suffix(".pub").read_text()
    body = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("-----")]
    pieces = [ln[i : i + 12] for ln in body for i in range(0, len(ln) - 12, 12)]
    return [piece for piece in pieces if piece not in public]


def recipients(project: VaultProject) -> dict[str, str]:
    """The recipients of the signed key record's newest entry."""
    lines = (project.root / "infra/state/key-record.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["entry"]["recipients"]


@pytest.fixture
def alice(tmp_path: Path) -> tuple[VaultProject, Path]:
    """A vault (CI's age key) with prod committed, and alice's SSH key added as a recipient."""
    project = make_project(tmp_path)
    deploy(project, "prod", "v1", secrets={"DB_PASSWORD": "secret-v1"})
    assert project.cli("commit", "prod").code == 0
    key = ssh_keygen(tmp_path, "alice")
    public = key.with_suffix(".pub").read_text().strip()
    added = project.cli("recipients", "add", "alice", public)
    assert added.code == 0, added.output
    # Stored without the .pub file's comment, so it compares equal to the private key's public.
    assert recipients(project)["alice"] == " ".join(public.split()[:2])
    return project, key


def test_an_ssh_recipient_opens_the_vault_with_its_private_key(alice, tmp_path: Path) -> None:
    project, key = alice
    expected = project.snapshot_home()
    # The real age CLI opens the wrapped data key with the SSH private key, like any age file.
    data_key = project.root / "infra" / "state" / "data-key.age"
    opened = subprocess.run(
        ["age", "-d", "-i", str(key), str(data_key)], capture_output=True, check=True
    )
    assert len(opened.stdout) == 32
    # SST_VAULT_KEY_FILE pointing at ~/.ssh/id_ed25519: a developer onboards with that.
    by_file = {**without_key(project.env), "SST_VAULT_KEY_FILE": str(key)}
    wipe_home(project)
    result = project.cli("prepare", "prod", env=by_file)
    assert result.code == 0, result.output
    assert project.snapshot_home() == expected
    # The whole key file in SST_VAULT_KEY (a CI secret holding it), after an age key line.
    other_age = project.key
    by_env = {**without_key(project.env), "SST_VAULT_KEY": key.read_text()}
    wipe_home(project)
    assert project.cli("prepare", "prod", env=by_env).code == 0
    both = {**without_key(project.env), "SST_VAULT_KEY": key.read_text() + "\n" + other_age}
    assert project.cli("status", "--verify", "prod", env=both).code == 0
    # alice deploys and commits with her SSH key; CI's age key opens what she sealed.
    deploy(project, "prod", "v2", secrets={"DB_PASSWORD": "secret-v2"})
    committed = project.cli("commit", "prod", env=by_file)
    assert committed.code == 0, committed.output
    wipe_home(project)
    assert project.cli("prepare", "prod").code == 0
    # Her public key, as `key export-public` prints it, is the .pub line without the comment.
    shown = project.cli("key", "export-public", env=by_file)
    assert shown.code == 0, shown.output
    assert shown.out.strip() == recipients(project)["alice"]
    for piece in key_material(key):
        assert piece not in result.output + committed.output + shown.output


def test_what_age_dash_R_seals_to_an_ssh_key_opens_with_that_key_here(tmp_path: Path) -> None:
    """Interop the other way: `age -R id_ed25519.pub` output opens with the identity sst-vault
    parses from the private key (the library call the vault uses to unwrap its data key)."""
    from pyrage import decrypt

    from vault import keys

    key = ssh_keygen(tmp_path, "bob")
    sealed = subprocess.run(
        ["age", "-R", str(key.with_suffix(".pub"))],
        input=b"x" * 32,
        capture_output=True,
        check=True,
    ).stdout
    (secret,) = keys.parse_secrets(key.read_text(), "key file")
    assert decrypt(sealed, [keys._age_identity(secret.text)]) == b"x" * 32
    assert secret.public() == " ".join(key.with_suffix(".pub").read_text().split()[:2])


def test_an_encrypted_ssh_key_says_how_to_use_an_age_key(alice, tmp_path: Path) -> None:
    project, _ = alice
    locked = ssh_keygen(tmp_path, "locked", passphrase="correct horse")
    was = before(project)
    for env in (
        {**without_key(project.env), "SST_VAULT_KEY_FILE": str(locked)},
        {**without_key(project.env), "SST_VAULT_KEY": locked.read_text()},
    ):
        result = project.cli("prepare", "prod", "--force", env=env)
        line = assert_refused(
            result,
            2,
            "passphrase-protected OpenSSH key",
            "sst-vault key generate",
            project=project,
            was=was,
        )
        assert "use an age key instead" in line
        for piece in key_material(locked):
            assert piece not in result.output


def test_an_rsa_key_is_refused_by_name(alice, tmp_path: Path) -> None:
    project, _ = alice
    rsa = ssh_keygen(tmp_path, "rsa", kind="rsa")
    was = before(project)
    env = {**without_key(project.env), "SST_VAULT_KEY_FILE": str(rsa)}
    assert_refused(
        project.cli("prepare", "prod", env=env),
        2,
        "ssh-rsa",
        "ssh-keygen -t ed25519",
        project=project,
        was=was,
    )
    added = project.cli("recipients", "add", "rsa", rsa.with_suffix(".pub").read_text())
    assert_refused(added, 2, "ssh-rsa keys are not supported", project=project, was=was)


def test_a_secret_key_where_a_public_key_belongs_is_refused_unshown(alice, tmp_path: Path) -> None:
    project, key = alice
    was = before(project)
    age_secret = project.key
    for pasted in (age_secret, key.read_text(), key.read_text().splitlines()[1]):
        result = project.cli("recipients", "add", "mallory", pasted)
        # Either sst-vault's check, or (for text starting with "-", which click takes for an
        # option and would quote) the CLI's guard: both say "secret key … (not shown)".
        assert_refused(result, 2, "secret key", "(not shown)", project=project, was=was)
        assert "AGE-SECRET" not in result.output and "PRIVATE KEY" not in result.output
        assert age_secret[16:28] not in result.output
        for piece in key_material(key):
            assert piece not in result.output
    # init's --recipient too.
    env = without_key(project.env) | {"SST_VAULT_KEY": age_secret}
    fresh = new_app_repo(tmp_path / "fresh", env)
    from conftest import run_cli

    result = run_cli(
        "init", "--no-keyring", "--recipient", f"bob={key.read_text()}", cwd=fresh, env=env
    )
    assert result.code == 2 and "that is a secret key" in result.err
    assert not (fresh / "sst-vault.toml").exists()
    for piece in key_material(key):
        assert piece not in result.output


def test_the_keyring_holds_an_ssh_key(alice, tmp_path: Path, secret_service) -> None:  # noqa: F811
    project, key = alice
    env = keyring_env(tmp_path, secret_service)
    imported = project.cli("key", "import", "--file", str(key), env=env)
    assert imported.code == 0, imported.output
    stored = lookup(env, vault_id(project))
    assert stored and "OPENSSH PRIVATE KEY" in stored
    wipe_home(project)
    result = project.cli("prepare", "prod", env=env)
    assert result.code == 0, result.output
    assert "the OS keyring" in project.cli("doctor", env=env).out


def test_cut_or_damaged_ssh_keys_are_one_clear_error(tmp_path: Path) -> None:
    """Every length in the key file's clear header is checked: a cut, truncated or garbled
    key is KeyFormatError (one line, exit 2 in the CLI), never a crash."""
    from vault import keys
    from vault.errors import KeyFormatError

    text = ssh_keygen(tmp_path, "cut").read_text()
    lines = text.splitlines()
    cases = {
        "no END line": "\n".join(lines[:-1]),
        "a line missing": "\n".join(lines[:2] + lines[3:]),
        "garbled": text.replace(lines[1], "!" * len(lines[1])),
        "only the markers": f"{lines[0]}\n{lines[-1]}",
    }
    for why, broken in cases.items():
        with pytest.raises(KeyFormatError) as caught:
            keys.parse_secrets(broken, "the key file")
        message = str(caught.value)
        assert "OpenSSH" in message and "the key file" in message, (why, message)
        for piece in key_material(tmp_path / "id_cut"):
            assert piece not in message
