"""Format v2 through the real CLI: commit writes it, v1 vaults keep working and upgrade as they
are committed, an unchanged state stays byte-identical, `chunking = false` in sst-vault.toml
turns chunking off, and a clear header with ill-typed fields is one Error line, never a
traceback. The v1 files are written as sst-vault 0.1 wrote them, under the data key that the
real `age -d` takes out of data-key.age.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

from conftest import VaultProject
from helpers import SYNCED_KINDS, assert_refused, commit_count, deploy, fresh_project

from vault import envelope
from vault.envelope import FileKey
from vault.keys import key_id_of


def header_of(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    length = struct.unpack(">I", data[9:13])[0]
    return data[8], json.loads(data[13 : 13 + length])


def data_key(p: VaultProject, tmp_path: Path) -> FileKey:
    identity = tmp_path / "identity.txt"
    identity.write_text(p.key + "\n")
    raw = subprocess.run(
        ["age", "-d", "-i", str(identity), str(p.root / "infra" / "state" / "data-key.age")],
        check=True,
        capture_output=True,
    ).stdout
    return FileKey(key_id_of(raw), envelope.CIPHER_STREAM, raw)


def test_commit_writes_v2_and_prepare_restores_it(tmp_path):
    p = fresh_project(tmp_path)
    deploy(p, "prod", "v2-marker", secrets={"TOKEN": "s3cret"}, size=300_000)
    before = {k: p.state_file(k, "prod").read_bytes() for k in SYNCED_KINDS}
    assert p.cli("commit", "prod").code == 0
    for kind in SYNCED_KINDS:
        version, header = header_of(p.vault_file(kind, "prod"))
        assert version == 2 and header["chunking"] == "cdc" and header["salt"] == ""
        assert header["size"] % 4096 == 0 and header["size"] >= len(before[kind])
    shutil.rmtree(p.home / "state")
    assert p.cli("prepare", "prod").code == 0
    assert {k: p.state_file(k, "prod").read_bytes() for k in SYNCED_KINDS} == before


def test_unchanged_state_keeps_the_file_byte_identical(tmp_path):
    p = fresh_project(tmp_path)
    deploy(p, "prod", "same", size=200_000)
    assert p.cli("commit", "prod").code == 0
    files = {k: p.vault_file(k, "prod").read_bytes() for k in ("app", "passphrase")}
    commits = commit_count(p)
    result = p.cli("commit", "prod")
    assert result.code == 0, result.output
    assert {k: p.vault_file(k, "prod").read_bytes() for k in files} == files
    assert commit_count(p) == commits


def test_a_deploy_keeps_most_chunks_of_the_previous_version(tmp_path):
    p = fresh_project(tmp_path)
    deploy(p, "prod", "first", size=400_000, seed=3)
    assert p.cli("commit", "prod").code == 0
    old = p.vault_file("app", "prod").read_bytes()
    state = p.state_file("app", "prod")
    text = state.read_bytes()
    middle = text.index(b'"urn": "', len(text) // 2) + len(b'"urn": "')
    state.write_bytes(text[:middle] + b"changed-" + text[middle:])  # one resource, still JSON
    assert p.cli("commit", "prod").code == 0
    new = p.vault_file("app", "prod").read_bytes()
    shared = sum(len(block) for block in _records(new) if block in set(_records(old)))
    assert shared > 0.9 * sum(map(len, _records(new)))


def _records(blob: bytes) -> list[bytes]:
    """The chunk records, without the zero padding that follows them (no record is empty)."""
    at = 13 + struct.unpack(">I", blob[9:13])[0] + envelope.MANIFEST_SIZE
    out = []
    # The padding may be shorter than a length prefix (1 to 3 zeros): stop there too.
    while at + 4 <= len(blob) and (size := struct.unpack(">I", blob[at : at + 4])[0]):
        out.append(blob[at : at + 4 + size])
        at += 4 + size
    return out


def test_v1_vault_opens_stays_when_unchanged_and_upgrades_on_commit(tmp_path):
    p = fresh_project(tmp_path)
    deploy(p, "prod", "from-v1", size=100_000)
    key = data_key(p, tmp_path)
    # The repository as sst-vault 0.1 left it: v1 files, committed.
    for kind in ("app", "passphrase"):
        _, blob = envelope.seal_bytes(
            p.state_file(kind, "prod").read_bytes(),
            key,
            app=p.app,
            stage="prod",
            kind=kind,
            serial=1,
            writer="old@sst-vault",
            version=1,
        )
        target = p.vault_file(kind, "prod")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
    p.git("add", "infra/state")
    p.git("commit", "-q", "-m", "state written by sst-vault 0.1")
    v1 = {k: p.vault_file(k, "prod").read_bytes() for k in ("app", "passphrase")}
    expected = {k: p.state_file(k, "prod").read_bytes() for k in ("app", "passphrase")}

    shutil.rmtree(p.home / "state")
    assert p.cli("prepare", "prod").code == 0  # v1 opens
    assert {k: p.state_file(k, "prod").read_bytes() for k in expected} == expected
    assert p.cli("commit", "prod").code == 0  # nothing changed: v1 stays, byte for byte
    assert {k: p.vault_file(k, "prod").read_bytes() for k in v1} == v1

    deploy(p, "prod", "changed-after-upgrade", size=100_000)
    assert p.cli("commit", "prod").code == 0
    assert header_of(p.vault_file("app", "prod"))[0] == 2  # changed: rewritten as v2
    assert p.vault_file("passphrase", "prod").read_bytes() == v1["passphrase"]  # unchanged
    changed = p.state_file("app", "prod").read_bytes()
    shutil.rmtree(p.home / "state")
    assert p.cli("prepare", "prod").code == 0
    assert p.state_file("app", "prod").read_bytes() == changed


def test_chunking_off_in_the_config(tmp_path):
    p = fresh_project(tmp_path)
    config = p.root / "sst-vault.toml"
    text = config.read_text()
    at = text.index("\napp = ") + 1  # a top-level key: before any [table]
    config.write_text(text[:at] + "chunking = false\n" + text[at:])
    deploy(p, "prod", "whole", size=100_000)
    assert p.cli("commit", "prod").code == 0
    version, header = header_of(p.vault_file("app", "prod"))
    assert version == 2 and header["chunking"] == "fixed" and len(header["salt"]) == 64
    shutil.rmtree(p.home / "state")
    before = p.vault_file("app", "prod").read_bytes()
    assert p.cli("prepare", "prod").code == 0
    assert p.vault_file("app", "prod").read_bytes() == before

    config.write_text(config.read_text().replace("chunking = false", 'chunking = "no"'))
    assert_refused(p.cli("status"), 2, "chunking must be true or false")


def test_ill_typed_header_fields_are_one_error_line(tmp_path):
    """The known bug: `"size": "1"` in a clear header crashed with a traceback."""
    p = fresh_project(tmp_path)
    deploy(p, "prod", "typed")
    assert p.cli("commit", "prod").code == 0
    key = data_key(p, tmp_path)
    target = p.vault_file("app", "prod")
    v2 = target.read_bytes()
    _, v1 = envelope.seal_bytes(
        b"{}", key, app=p.app, stage="prod", kind="app", serial=1, writer="w", version=1
    )
    for blob in (v2, v1):
        length = struct.unpack(">I", blob[9:13])[0]
        fields = {**json.loads(blob[13 : 13 + length]), "size": "1"}
        raw = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
        target.write_bytes(blob[:9] + struct.pack(">I", len(raw)) + raw + blob[13 + length :])
        for command in (("status",), ("prepare", "prod", "--force"), ("commit", "prod")):
            assert_refused(p.cli(*command), 1, "tampered", "malformed header")
