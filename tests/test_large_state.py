"""The streamed paths that only states above a few MB take: chunked JSON validation in a
child process, zlib on several threads, the decompressing reader thread."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from conftest import CLIResult, VaultProject
from helpers import assert_refused, deploy, fresh_project
from test_refusals import unchanged

from vault import envelope, jsoncheck, sealing
from vault.envelope import FileKey
from vault.errors import InvalidStateError
from vault.sealing import FROM_HOME

CASES = [
    b"",
    b" ",
    b"{}",
    b"[]",
    b"1",
    b"12345",
    b"1e5",
    b"-0.5e-3 ",
    b"1.5",
    b'"abc"',
    b'{"a":1}',
    b'{"a":1,}',
    b"[1,2,]",
    b'{"a" 1}',
    b"{]",
    b"not json",
    b'{"version": 3, "checkpoint": ',
    b"nul",
    b"null",
    b"true false",
    b"NaN",
    b"[Infinity, -Infinity]",
    b"\xef\xbb\xbf{}",
    b'"\xed\xa0\x80"',
    b'"\xff"',
    b'{"a":"\\u12"}',
    b'{"a":"\\u1234"}',
    b"[1 2]",
    b'{"a":[{"b":{"c":[1,2,3,{"d":"e"}]}}]}  ',
    '{"é": "ü"}'.encode(),
    b'"a\x01"',
    b"[[[[[[[]]]]]]]",
    b'{"a":1}x',
    b'["a\\"b"]',
    b'{"\\"":1}',
    b"[ ]",
    b"{ }",
    b"[01]",
    b"[1.]",
    b"[-]",
    b'{"a":1 "b":2}',
    '{"a": "x"}'.encode("utf-16"),
    b"123 456",
]


def accepted(check, data: bytes) -> bool:
    try:
        check(data)
    except (ValueError, RecursionError):
        return False
    return True


@pytest.mark.parametrize(("window", "low"), [(4, 0), (16, 2), (1 << 20, 1 << 16)])
def test_chunked_json_check_agrees_with_json_loads(monkeypatch, window, low):
    monkeypatch.setattr(jsoncheck, "_WINDOW", window)
    monkeypatch.setattr(jsoncheck, "_LOW", low)
    rng = random.Random(7)
    doc = json.dumps(
        {"checkpoint": {"resources": [{"urn": f"r{i}", "n": i * 1.5e-3} for i in range(50)]}},
        indent=4,
    ).encode()
    cases = [*CASES, doc]
    for _ in range(200):  # damaged variants: a byte dropped, inserted or the tail cut
        mutant = bytearray(rng.choice(cases))
        if mutant:
            at = rng.randrange(len(mutant))
            how = rng.randrange(3)
            if how == 0:
                del mutant[at]
            elif how == 1:
                mutant.insert(at, rng.choice(b'{}[],:"\\ 0.e-'))
            else:
                del mutant[at:]
        cases.append(bytes(mutant))
    for data in cases:
        want = accepted(json.loads, data)
        for size in (1, 3, 7, 1 << 20):
            got = accepted(
                lambda d, n=size: jsoncheck.check(d[i : i + n] for i in range(0, len(d), n)),
                data,
            )
            assert got == want, (data, size)


def test_threaded_compression_opens_to_the_same_bytes():
    key = FileKey("svk1-test", envelope.CIPHER_STREAM, bytes(range(32)))
    plain = b"".join(b'{"n": %d, "pad": "%s"},\n' % (i, b"x" * (i % 97)) for i in range(200_000))
    plain += random.Random(1).randbytes(300_000)
    meta = dict(app="a", stage="s", kind="app", serial=1, writer="w")
    out = io.BytesIO()
    header = envelope.seal(io.BytesIO(plain), out, key, level=3, workers=2, **meta)
    assert len(plain) > 4 * 1024 * 1024  # big enough for the reader thread
    assert header.size == envelope.rounded_size(len(plain))  # v2 shows it rounded
    got = io.BytesIO()
    envelope.open_(io.BytesIO(out.getvalue()), got, key, "f", app="a", stage="s", kind="app")
    assert got.getvalue() == plain


def big_state(size: int) -> bytes:
    resources = [{"urn": f"urn:pulumi:x::r{i}", "data": "y" * 900} for i in range(size // 950)]
    return json.dumps({"version": 3, "checkpoint": {"latest": {"resources": resources}}}).encode()


def test_large_state_round_trip_and_corrupt_refusal(tmp_path: Path):
    p: VaultProject = fresh_project(tmp_path)
    deploy(p, "prod")
    state = big_state(6 * 1024 * 1024)
    p.state_file("app", "prod").write_bytes(state)
    assert p.cli("commit", "prod").code == 0
    assert zlib.crc32(state) == zlib.crc32(p.state_file("app", "prod").read_bytes())
    p.state_file("app", "prod").unlink()
    result = p.cli("prepare", "prod")
    assert result.code == 0, result.output
    assert p.state_file("app", "prod").read_bytes() == state
    comma = state.index(b"}, {", 3_000_000) + 1  # a dropped comma halfway through
    for bad in (state[:-1], state[:comma] + state[comma + 1 :]):
        with pytest.raises(ValueError):
            json.loads(bad)
        p.state_file("app", "prod").write_bytes(bad)
        with unchanged(p):
            assert_refused(p.cli("commit", "prod"), 1, "not valid JSON", "redeploy")


# --- the JSON check in a child process (a checkpoint above sealing.OVERLAP_MIN) ---------------


def child_verdict(tmp_path: Path, data: bytes, sealed: bytes | None = None) -> None:
    """Run the child check on `data` as a file; `finish` as if `sealed` (default: it) was sealed."""
    path = tmp_path / "state.json"
    path.write_bytes(data)
    digest = hashlib.sha256(data if sealed is None else sealed).hexdigest()
    with path.open("rb") as handle, sealing.JsonCheckProcess(handle, path, FROM_HOME) as child:
        child.finish(digest)


@pytest.mark.parametrize("data", [c for c in CASES if c.strip()] + [b"\xff{}", b"[" * 100_000])
def test_child_check_refuses_exactly_what_the_chunked_check_refuses(tmp_path: Path, data: bytes):
    """The message a user sees is the in-process chunked check's (the thread's, before)."""
    try:
        jsoncheck.check([data])
        expected = None
    except (ValueError, RecursionError) as exc:
        expected = str(sealing._invalid_json(tmp_path / "state.json", exc, FROM_HOME))
    if expected is None:
        child_verdict(tmp_path, data)
    else:
        with pytest.raises(InvalidStateError) as info:
            child_verdict(tmp_path, data)
        assert str(info.value) == expected


def test_child_check_counts_only_for_the_bytes_sealed(tmp_path: Path):
    """A verdict on other bytes than those sealed (SST wrote meanwhile) is no verdict."""
    with pytest.raises(envelope.ChangedWhileReading):
        child_verdict(tmp_path, b'{"a": 1}', sealed=b'{"a": 2}')
    with pytest.raises(envelope.ChangedWhileReading):  # not "invalid JSON": other bytes
        child_verdict(tmp_path, b'{"a": ', sealed=b'{"a": 1}')


def paused_child(parent: subprocess.Popen) -> int:
    """The pid of `parent`'s JSON check child, once it stopped at its pause point."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "T" and int(fields[1]) == parent.pid:
                return int(stat.parent.name)
        assert parent.poll() is None, parent.stderr.read() if parent.stderr else ""
        time.sleep(0.05)
    raise AssertionError("the JSON check's child never paused")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc (Linux)")
def test_killed_child_check_fails_closed_and_never_saw_the_key(tmp_path: Path):
    p: VaultProject = fresh_project(tmp_path)
    deploy(p, "prod")
    assert p.cli("commit", "prod").code == 0
    p.state_file("app", "prod").write_bytes(big_state(6 * 1024 * 1024))
    with unchanged(p):
        parent = subprocess.Popen(
            [sys.executable, "-m", "vault", "--sst-home", str(p.home), "commit", "prod"],
            cwd=p.root,
            env={**p.env, "SST_VAULT_TEST_PAUSE": "json-check"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        child = paused_child(parent)
        environ = Path(f"/proc/{child}/environ").read_bytes()
        assert b"SST_VAULT_KEY" not in environ and p.key.encode() not in environ
        os.kill(child, signal.SIGKILL)
        out, err = parent.communicate(timeout=120)
        result = CLIResult(parent.returncode, out, err)
        assert_refused(result, 1, "JSON check did not finish", "SIGKILL", "retry")


def test_large_vault_file_stored_by_git_while_it_is_verified(tmp_path: Path):
    """A sealed file above STORE_AHEAD_MIN goes into git's object store while it is verified;
    the commit holds exactly its bytes, and a refused commit leaves nothing behind."""
    p: VaultProject = fresh_project(tmp_path)
    deploy(p, "prod")
    assert p.cli("commit", "prod").code == 0
    rng = random.Random(7)  # base64 of random bytes: the sealed file stays above the minimum
    blobs = [base64.b64encode(rng.randbytes(3000)).decode() for _ in range(2000)]
    state = json.dumps({"version": 3, "checkpoint": {"blobs": blobs}}).encode()
    p.state_file("app", "prod").write_bytes(state[:-1])
    with unchanged(p):
        assert_refused(p.cli("commit", "prod"), 1, "not valid JSON", "redeploy")
    p.state_file("app", "prod").write_bytes(state)
    result = p.cli("commit", "prod")
    assert result.code == 0, result.output
    vault = p.vault_file("app", "prod").read_bytes()
    assert len(vault) >= sealing.STORE_AHEAD_MIN
    blob = subprocess.run(
        ["git", "cat-file", "blob", "HEAD:infra/state/app/prod.json.vault"],
        cwd=p.root,
        env=p.env,
        capture_output=True,
        check=True,
    ).stdout
    assert blob == vault
    assert p.git("status", "--porcelain") == ""
    p.git("fsck", "--no-dangling")
