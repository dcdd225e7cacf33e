"""No plaintext state anywhere in git: not in any object, not in .git, not in the work tree."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import sstfake
from conftest import VaultProject
from helpers import (
    copied_vault_project,  # noqa: F401 (a fixture)
    deploy,
    fresh_project,
    run_git,
)


def all_objects(p: VaultProject) -> bytes:
    """Every object git holds (loose and packed), decompressed."""
    return run_git(["cat-file", "--batch-all-objects", "--batch"], p.root, p.env)


def files_below(root: Path, skip: tuple[Path, ...] = ()) -> dict[Path, bytes]:
    found = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(dirpath, d) not in skip]
        for name in files:
            path = Path(dirpath, name)
            if not path.is_symlink():
                found[path] = path.read_bytes()
    return found


def needles(
    p: VaultProject, stages: list[str], markers: list[str], values: list[str]
) -> dict[str, bytes]:
    """What must never leave the SST home: markers, passphrases (text and raw), secret values."""
    found: dict[str, bytes] = {m: m.encode() for m in markers + values}
    for stage in stages:
        text = sstfake.state_path(p.home, "passphrase", p.app, stage).read_bytes()
        found[f"passphrase {stage}"] = text
        found[f"raw passphrase {stage}"] = base64.b64decode(text)
        found[f"secret file {stage}"] = sstfake.state_path(
            p.home, "secret", p.app, stage
        ).read_bytes()[12:40]
    return found


def assert_absent(blob: bytes, where: str, secrets: dict[str, bytes]) -> None:
    for name, needle in secrets.items():
        assert needle not in blob, f"{name} found in {where}"


@pytest.mark.parametrize("backend", ["age", "fernet"])
def test_no_plaintext_in_git_or_the_work_tree(tmp_path: Path, backend: str):
    p = fresh_project(tmp_path, backend)
    # Random passphrases here (not the tests' fixed ones): nothing else may know them.
    markers, values = [], []
    for round_ in range(3):
        for stage in ("prod", "dev"):
            marker = f"MARKER-{backend}-{stage}-{round_}-c0ffee"
            value = f"secret-value-{stage}-{round_}-{os.urandom(6).hex()}"
            markers.append(marker)
            values.append(value)
            if round_ == 0:
                sstfake.write_passphrase(p.home, p.app, stage)
            sstfake.write_secrets(p.home, p.app, stage, {"API_KEY": value, "N": str(round_)})
            sstfake.write_state(p.home, p.app, stage, marker=marker, resources=4)
        fallback = f"fallback-value-{round_}-{os.urandom(6).hex()}"
        values.append(fallback)
        sstfake.write_secrets(p.home, p.app, None, {"SHARED": fallback})
        result = p.cli("commit", "--all", "-m", f"round {round_}")
        assert result.code == 0, result.output
    # A prepare and a status leave nothing behind in the repo either.
    assert p.cli("prepare", "--all").code == 0
    assert p.cli("status", "--json").code == 0
    secrets = needles(p, ["prod", "dev", "_fallback"], markers, values)
    # The needles are real: the last round's are in the SST home, where they belong.
    home = b"".join(files_below(p.home / "state").values())
    for name, needle in secrets.items():
        if name.startswith(("passphrase", "secret file")) or name in markers[-2:]:
            assert needle in home, name

    assert_absent(all_objects(p), "a git object", secrets)
    # Nowhere outside the SST home: work tree, .git, the test's HOME and git config.
    for path, data in files_below(tmp_path, skip=(p.home,)).items():
        assert_absent(data, str(path), secrets)
    run_git(["gc", "--quiet", "--aggressive", "--prune=now"], p.root, p.env)
    assert not list((p.root / ".git" / "objects").glob("??/*")), "gc left loose objects"
    assert_absent(all_objects(p), "a packed git object", secrets)
    for path, data in files_below(p.root).items():
        assert_absent(data, str(path), secrets)
    # Only the vault files and sst-vault's own files were ever committed.
    names = run_git(["log", "--all", "--name-only", "--format="], p.root, p.env).decode().split()
    assert {n for n in names if not n.endswith(".vault")} <= {
        "sst.config.ts",
        "sst-vault.toml",
        ".gitattributes",
        ".gitignore",
        "infra/state/data-key.age",
        "infra/state/key-record.jsonl",
    }


def test_git_log_p_leaves_no_plaintext_behind(vault_project: VaultProject):
    """The diff driver decrypts for key holders on screen only: no key, no plaintext; and
    nothing it showed is cached in git (no textconv notes)."""
    p = vault_project
    deploy(p, "prod", "SHOW-MARKER-1", secrets={"K": "shown-value-1"})
    assert p.cli("commit", "prod").code == 0
    deploy(p, "prod", "SHOW-MARKER-2", secrets={"K": "shown-value-2"})
    assert p.cli("commit", "prod").code == 0
    no_key = {k: v for k, v in p.env.items() if k != "SST_VAULT_KEY"}
    log = run_git(["log", "-p", "--all"], p.root, no_key)
    for needle in (b"SHOW-MARKER", b"shown-value"):
        assert needle not in log
    # A key holder's view of the app file's last change, through the diff driver.
    run_git(["log", "-p", "-1", "--", "infra/state/app"], p.root, p.env)
    objects = all_objects(p)
    assert b"SHOW-MARKER" not in objects and b"shown-value" not in objects
    assert "textconv" not in run_git(["for-each-ref"], p.root, p.env).decode()
