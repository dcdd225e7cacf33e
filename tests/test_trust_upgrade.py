"""Upgrading a vault made by sst-vault 0.1 (recipients in sst-vault.toml, no key record).

A 0.1 vault is what `init` wrote then: `data-key.age` wrapped to the recipients that
`sst-vault.toml` listed under `[recipients]`, and no `key-record.jsonl`. The tests make one by
removing the record from a new vault and writing the toml section back, with git only.
"""

from __future__ import annotations

import shutil
import subprocess

from conftest import VaultProject, needs, new_key
from helpers import assert_refused, deploy, fresh_project, public_of

AGE = shutil.which("age")


def make_legacy(project: VaultProject, recipients: dict[str, str]) -> None:
    """Turn a vault into what sst-vault 0.1 left: toml recipients, no signed record."""
    (project.root / "infra/state/key-record.jsonl").unlink()
    lines = "".join(f'"{name}" = "{public}"\n' for name, public in recipients.items())
    with (project.root / "sst-vault.toml").open("a") as toml:
        toml.write(f"\n[recipients]\n{lines}")
    project.git("add", "-A")
    project.git("commit", "-qm", "a vault as sst-vault 0.1 left it")


def legacy_vault(tmp_path) -> VaultProject:
    """A vault as 0.1 left it, with prod committed; the record was never in its history."""
    project = fresh_project(tmp_path)
    deploy(project, "prod", "legacy")
    assert project.cli("commit", "prod").code == 0
    shutil.rmtree(project.root / ".git")
    shutil.rmtree(project.home / ".sst-vault" / "trust")  # 0.1 machines remembered nothing
    (project.root / "infra/state/key-record.jsonl").unlink()
    attributes = project.root / ".gitattributes"
    attributes.write_text(
        attributes.read_text().replace("infra/state/key-record.jsonl -text -merge\n", "")
    )
    with (project.root / "sst-vault.toml").open("a") as toml:
        toml.write(f'\n[recipients]\n"ci" = "{public_of(project, project.key)}"\n')
    project.git("init", "-q")
    project.git("add", "-A")
    project.git("commit", "-qm", "a vault as sst-vault 0.1 left it")
    return project


def test_a_legacy_vault_asks_for_the_upgrade_then_works(tmp_path):
    project = legacy_vault(tmp_path)
    deploy(project, "prod", "newer")
    for args in (("commit", "prod"), ("prepare", "prod"), ("recipients", "list"), ("key", "pin")):
        line = assert_refused(project.cli(*args), 2, "no signed key record", "key upgrade")
        assert "SST_VAULT_PIN" in line

    result = project.cli("key", "upgrade")  # no terminal: shows the recipients, then refuses
    assert result.code == 2, result.output
    assert f"ci = {public_of(project, project.key)}" in result.out
    assert "--yes" in result.err

    result = project.cli("key", "upgrade", "--yes")
    assert result.code == 0, result.output
    pin = result.out.strip().splitlines()[-1]
    assert pin.startswith("SST_VAULT_PIN=svid1-")
    toml = (project.root / "sst-vault.toml").read_text()
    assert "[recipients]" not in toml
    changed = set(project.git("show", "--name-only", "--format=", "HEAD").split())
    assert changed == {
        "infra/state/key-record.jsonl",
        "infra/state/data-key.age",
        "sst-vault.toml",
        ".gitattributes",
        *(f"infra/state/{kind}/prod.json.vault" for kind in ("app", "passphrase")),
    }
    attributes = (project.root / ".gitattributes").read_text()
    assert "infra/state/key-record.jsonl -text -merge" in attributes
    assert project.git("status", "--porcelain") == ""

    assert project.cli("commit", "prod").code == 0
    pinned = dict(project.env, SST_VAULT_PIN=pin.removeprefix("SST_VAULT_PIN="))
    shutil.rmtree(project.home)
    result = project.cli("prepare", "prod", env=pinned)
    assert result.code == 0, result.output
    assert_refused(project.cli("key", "upgrade", "--yes"), 1, "upgraded already")


@needs("age")
def test_upgrade_starts_a_new_data_key_that_an_injected_recipient_never_opens(tmp_path):
    """0.1's toml was writable by anyone who can push: the upgrade shows every recipient for
    review, and with --recipient the member chooses exactly who is carried over."""
    project = legacy_vault(tmp_path)
    attacker = new_key(project.env)
    with (project.root / "sst-vault.toml").open("a") as toml:
        toml.write(f'"mallory" = "{public_of(project, attacker)}"\n')

    result = project.cli("key", "upgrade")
    assert "mallory" in result.out  # shown for review before anything is signed
    me = public_of(project, project.key)
    result = project.cli("key", "upgrade", "--yes", "--recipient", f"ci={me}")
    assert result.code == 0, result.output
    listing = project.cli("recipients", "list")
    assert listing.code == 0 and "mallory" not in listing.out, listing.output
    identity = tmp_path / "attacker.txt"
    identity.write_text(attacker + "\n")
    opened = subprocess.run(
        [AGE, "-d", "-i", str(identity), str(project.root / "infra/state/data-key.age")],
        capture_output=True,
    )
    assert opened.returncode != 0


def test_deleting_the_record_of_an_upgraded_vault_is_refused(tmp_path):
    project = fresh_project(tmp_path)
    deploy(project, "prod", "one")
    assert project.cli("commit", "prod").code == 0
    make_legacy(project, {"ci": public_of(project, project.key)})
    # This machine remembers the record; a fresh clone of the history refuses it too.
    line = assert_refused(project.cli("prepare", "prod", "--force"), 1, "key-record.jsonl")
    assert "had one" in line
    shutil.rmtree(project.home)
    assert_refused(project.cli("prepare", "prod", "--force"), 1, "deleted after commit")
    assert_refused(project.cli("key", "upgrade", "--yes"), 1, "deleted after commit")
