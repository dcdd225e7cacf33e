"""DESIGN.md guarantees 2, 3 and 5 through the CLI: forged, moved and damaged vault files.

An attacker here can push to the repository and knows the public recipients (the key record
lists them), but holds no secret key. They can always wrap a data key of their own to those
recipients with the real `age` CLI; the signed key record names another one, so every member
refuses it, pinned or not (the trust model's promise 1; tests/test_trust_attacks.py has more).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import VaultProject, make_project, needs
from helpers import assert_refused, before, deploy, key_id, wipe_home

from vault import envelope
from vault.keys import data_file_key

pytestmark = needs("age")

MALLORY = {
    "GIT_AUTHOR_NAME": "Mallory",
    "GIT_AUTHOR_EMAIL": "m@evil.example",
    "GIT_COMMITTER_NAME": "Mallory",
    "GIT_COMMITTER_EMAIL": "m@evil.example",
}


def serial_of(project: VaultProject, kind: str, stage: str) -> int:
    path = project.vault_file(kind, stage)
    with path.open("rb") as handle:
        return envelope.read_header(handle, path)[0].serial


def forge(project: VaultProject, stage: str, data_key: bytes, *, claim_id: str | None = None):
    """Seal the attacker's own state for `stage` under `data_key`, one serial ahead."""
    key = data_file_key(data_key)
    if claim_id:
        key = envelope.FileKey(claim_id, key.cipher, key.secret)  # lie about the key id
    state = {
        "version": 3,
        "checkpoint": {
            "stack": "organization/demo-app/prod",
            "latest": {"marker": "mallory", "resources": []},
        },
    }
    plain = {
        "passphrase": b"bWFsbG9yeSBtYWxsb3J5IG1hbGxvcnkgbWFsbG9yeSE=",
        "app": json.dumps(state).encode(),
    }
    for kind, data in plain.items():
        _, blob = envelope.seal_bytes(
            data,
            key,
            app=project.app,
            stage=stage,
            kind=kind,
            serial=serial_of(project, kind, stage) + 1,
            writer="ci@runner",
        )
        project.vault_file(kind, stage).write_bytes(blob)
    project.vault_file("secret", stage).unlink()


def attacker_commit(project: VaultProject, message: str = "bump dependencies") -> None:
    project.git("add", "-A", "infra/state")
    subprocess.run(
        ["git", "commit", "-q", "-m", message],
        cwd=project.root,
        env=dict(project.env, **MALLORY),
        check=True,
    )


@pytest.fixture
def committed(vault_project: VaultProject) -> VaultProject:
    deploy(vault_project, "prod", "v1", secrets={"DB_PASSWORD": "secret-v1"})
    deploy(vault_project, "staging", "v1", secrets={"DB_PASSWORD": "secret-v1"})
    result = vault_project.cli("commit", "prod", "staging")
    assert result.code == 0, result.output
    return vault_project


# --- guarantee 2: a forged vault --------------------------------------------------------


def test_forged_data_key_is_refused_pinned_or_not(committed):
    p = committed
    real_id = key_id(p)
    # CI variables often end in a newline; the pin still matches.
    assert key_id(p, dict(p.env, SST_VAULT_KEY_ID=f" {real_id}\n")) == real_id
    record = (p.root / "infra" / "state" / "key-record.jsonl").read_text().splitlines()
    recipients = json.loads(record[-1])["entry"]["recipients"]
    forged_key = os.urandom(32)
    wrapped = subprocess.run(
        ["age", "-e", "-a", *(a for r in recipients.values() for a in ("-r", r))],
        input=forged_key,
        capture_output=True,
        check=True,
    ).stdout
    (p.root / "infra" / "state" / "data-key.age").write_bytes(wrapped)
    forge(p, "prod", forged_key)
    attacker_commit(p)
    forged_id = data_file_key(forged_key).key_id

    pins = {"unpinned": {}, "key id": {"SST_VAULT_KEY_ID": real_id}}
    for home in ("synced", "fresh"):
        if home == "fresh":
            wipe_home(p)
        was = before(p)
        for extra in pins.values():
            for command in (
                ("prepare", "prod"),
                ("prepare", "prod", "--force"),
                ("prepare", "staging"),
                ("commit", "staging"),
                ("key", "id"),
            ):
                assert_refused(
                    p.cli(*command, env=dict(p.env, **extra)),
                    1,
                    real_id,
                    forged_id,
                    "data-key.age",
                    "key record",
                    project=p,
                    was=was,
                )


def test_forged_files_under_the_genuine_data_key_file_never_open(committed):
    """Without swapping data-key.age the attacker's files fail even unpinned."""
    p = committed
    forged_key = os.urandom(32)
    forge(p, "prod", forged_key)
    was = before(p)
    assert_refused(
        p.cli("prepare", "prod"),
        1,
        "wrong key",
        "prod.json.vault",
        data_file_key(forged_key).key_id,
        project=p,
        was=was,
    )
    # Claiming the genuine key id in the clear header does not help: authentication fails.
    p.git("checkout", "--", "infra/state")
    forge(p, "prod", forged_key, claim_id=key_id(p))
    wipe_home(p)
    was = before(p)
    assert_refused(p.cli("prepare", "prod"), 1, "tampered", "prod.json.vault", project=p, was=was)


# --- guarantee 3: a file moved to another stage or kind ---------------------------------


@pytest.mark.parametrize(
    ("source", "target", "stage"),
    [
        (("app", "prod"), ("app", "staging"), "staging"),
        (("passphrase", "staging"), ("passphrase", "prod"), "prod"),
        (("passphrase", "prod"), ("secret", "prod"), "prod"),
        (("app", "prod"), ("app", "dev"), "dev"),  # a stage that never existed
    ],
    ids=["app-to-other-stage", "passphrase-to-other-stage", "to-other-kind", "to-new-stage"],
)
def test_file_copied_to_another_path_is_refused(committed, source, target, stage):
    p = committed
    shutil.copyfile(p.vault_file(*source), p.vault_file(*target))
    moved = str(p.vault_file(*target).relative_to(p.root))
    for home in ("synced", "fresh"):
        if home == "fresh":
            wipe_home(p)
        was = before(p)
        line = assert_refused(p.cli("prepare", stage), 1, "tampered", moved, project=p, was=was)
        assert f"belongs to {'kind' if source[0] != target[0] else 'stage'}" in line
        assert_refused(p.cli("prepare", "--all"), 1, "tampered", moved, project=p, was=was)


# --- guarantee 5: damaged and foreign files fail closed ---------------------------------


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


DAMAGE = {
    "flipped-byte": (_flip_last, "tampered"),
    "flipped-header-byte": (lambda d: d.replace(b'"serial":1', b'"serial":9', 1), "tampered"),
    "truncated": (lambda d: d[: len(d) // 2], "tampered"),
    "last-byte-cut": (lambda d: d[:-1], "tampered"),
    "header-only": (lambda d: d[: 13 + int.from_bytes(d[9:13], "big")], "tampered"),
    "empty": (lambda d: b"", "not a vault file"),
    "plaintext-state": (lambda d: b'{"version": 3}\n', "not a vault file"),
    "newer-format": (lambda d: d[:8] + b"\x03" + d[9:], "newer format"),
}
SAME_HEADER = {"flipped-byte", "last-byte-cut", "header-only"}


@pytest.mark.parametrize("backend", ["age", "fernet"])
def test_damaged_files_fail_closed(tmp_path, backend):
    p = make_project(tmp_path, backend=backend)
    deploy(p, "prod", "v1", secrets={"DB_PASSWORD": "secret-v1"})
    assert p.cli("commit", "prod").code == 0
    target = p.vault_file("app", "prod")
    original = target.read_bytes()
    named = str(target.relative_to(p.root))
    # The fernet body is one token: a few cases cover it.
    names = DAMAGE if backend == "age" else ["flipped-byte", "flipped-header-byte", "truncated"]
    for name in names:
        damage, reason = DAMAGE[name]
        target.write_bytes(damage(original))
        # On a fresh runner (everything to write) and, where the clear header still matches,
        # with the home in sync (nothing to write: the body must be verified all the same).
        homes = ["synced", "fresh"] if name in SAME_HEADER else ["fresh"]
        for home in homes:
            if home == "fresh":
                wipe_home(p)
            was = before(p)
            line = assert_refused(p.cli("prepare", "prod"), 1, reason, named, project=p, was=was)
            assert line.count(":") >= 3, f"{name}: no hint in {line!r}"
        target.write_bytes(original)
        assert p.cli("prepare", "prod").code == 0


@pytest.mark.parametrize("backend", ["age", "fernet"])
def test_status_verify_finds_what_headers_hide(tmp_path, backend):
    p = make_project(tmp_path, backend=backend)
    for stage in ("prod", "staging"):
        deploy(p, stage, "v1", secrets={"DB_PASSWORD": "secret-v1"})
    assert p.cli("commit", "prod", "staging").code == 0
    body = p.vault_file("app", "prod")
    header = p.vault_file("passphrase", "staging")
    originals = {path: path.read_bytes() for path in (body, header)}

    # A flipped byte in the body, behind an intact header: plain status cannot see it. (It
    # arrives committed, as a writer's would: an uncommitted edit shows as `uncommitted`.)
    body.write_bytes(_flip_last(originals[body]))
    p.git("commit", "-q", "-am", "a writer damages a body")
    plain = p.cli("status", "prod")
    assert plain.code == 0 and "Error" not in plain.err
    assert all("in sync" in line for line in plain.out.splitlines()), plain.out
    was = before(p)
    verified = p.cli("status", "--verify")
    # stdout holds the table (checked below), stderr the one error line.
    assert_refused(
        verified, 1, "1 vault file(s) do not open (prod app)", "git", out=None, project=p, was=was
    )
    lines = verified.out.splitlines()
    [app_line] = [line for line in lines if line.split()[:2] == ["prod", "app"]]
    assert "damaged" in app_line and ": tampered: " in app_line
    others = [line for line in lines if line != app_line]
    assert len(others) == 5 and all("in sync" in line for line in others), verified.out

    # A damaged header: plain status refuses outright; --verify lists it with the rest.
    header.write_bytes(b"")
    assert_refused(p.cli("status"), 1, "not a vault file", project=p, was=before(p))
    was = before(p)
    listed = p.cli("status", "--verify", "--json")
    assert_refused(listed, 1, "2 vault file(s) do not open", out=None, project=p, was=was)
    rows = {(r["stage"], r["kind"]): r for r in json.loads(listed.out)}
    assert rows["prod", "app"]["state"] == "damaged"
    assert rows["prod", "app"]["problem"].startswith("tampered: ")
    assert rows["staging", "passphrase"]["state"] == "damaged"
    assert rows["staging", "passphrase"]["problem"].startswith("not a vault file: ")
    assert rows["prod", "secret"] == {**rows["prod", "secret"], "state": "in sync", "problem": None}

    for path, data in originals.items():
        path.write_bytes(data)
    healthy = p.cli("status", "--verify")
    assert healthy.code == 0 and healthy.err == "", healthy.output
