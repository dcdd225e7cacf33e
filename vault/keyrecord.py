"""The vault's key record: who can open the vault, signed along a chain of data keys.

This file is the specification of `<state_dir>/key-record.jsonl` (SECURITY.md repeats it). It
is the answer to "who decides who can read the vault?": not `sst-vault.toml`, not anyone who can
push, only a holder of the current data key.

The record is JSON Lines, one entry a line, append-only. Entry `n` says: from now on the data key
is the one whose id is `key_id` and whose signing public key is `signing_key`, and it is wrapped
to exactly these named `recipients`. Every data key K has an Ed25519 signing key derived from it:

    seed = HKDF-SHA-256(IKM = K, salt = none, info = "sst-vault/2 signing key", L = 32)

Entry 0 is signed by its own key (`sig_self`). Entry n > 0 is signed by the previous entry's
signing key (`sig_prev`) *and* by its own (`sig_self`), and names the previous entry's hash in
`prev`. Adding a recipient appends an entry with the same data key; a rotation (and every
removal) appends one with a new data key, which carries the previous data key sealed under the
new one (`previous_key`), so members can still review history. This is TUF's root rotation with
the data key as the root key: a writer who holds no data key cannot append an entry, and cannot
change an old one without breaking every hash after it.

The vault's identity is a hash of entry 0 (`svid1-…`); it never changes, so CI pins it once
(`SST_VAULT_PIN`) and the pin survives every rotation. Parsing is separate from verification:
`parse` checks types and bounds of untrusted bytes; `verify` checks the chain; only a
`Record` returned by `verify` is ever used to decide anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vault.envelope import _hkdf
from vault.errors import TrustError

RECORD_VERSION = 1
IDENTITY_PREFIX = "svid1-"
MAX_RECORD_BYTES = 4 * 1024 * 1024  # thousands of entries; a vault has a handful a year
MAX_ENTRIES = 10_000
MAX_LINE_BYTES = 256 * 1024
MAX_RECIPIENTS = 256
MAX_TEXT = 4096  # a recipient (SSH keys are long), a writer name, a time

_SIGNING_INFO = b"sst-vault/2 signing key"
_HISTORY_INFO = b"sst-vault/2 key history"
_SIGNATURE_CONTEXT = b"sst-vault key record v1\x00"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"svk1-[0-9a-f]{32}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_FIELDS = {
    "v",
    "seq",
    "prev",
    "app",
    "key_id",
    "signing_key",
    "recipients",
    "previous_key",
    "supersedes",
    "by",
    "time",
}


@dataclass(frozen=True)
class Entry:
    """One parsed (not yet verified) entry and the signatures on it."""

    seq: int
    prev: str
    app: str
    key_id: str
    signing_key: str  # hex, 32 bytes
    recipients: dict[str, str]
    previous_key: str  # hex nonce || ciphertext of the previous data key, or ""
    supersedes: tuple[str, ...]
    by: str
    time: str
    sig_prev: str
    sig_self: str
    body: bytes = field(repr=False)  # canonical JSON of everything above but the signatures

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class Record:
    """A verified chain: every signature and link checked by `verify`."""

    entries: tuple[Entry, ...]

    @property
    def identity(self) -> str:
        return identity_of(self.entries[0])

    @property
    def newest(self) -> Entry:
        return self.entries[-1]

    @property
    def recipients(self) -> dict[str, str]:
        return dict(self.newest.recipients)

    def hashes(self) -> list[str]:
        return [e.hash for e in self.entries]

    def extends(self, hashes: list[str]) -> bool:
        """True when the chain given by `hashes` is a prefix of this one."""
        return self.hashes()[: len(hashes)] == hashes

    def dumps(self) -> bytes:
        return b"".join(_line(e) for e in self.entries)


def identity_of(first: Entry) -> str:
    return IDENTITY_PREFIX + hashlib.sha256(first.body).hexdigest()[:32]


# --- keys derived from a data key --------------------------------------------------------


def _signing_private(data_key: bytes):  # -> Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(_hkdf(data_key, b"", _SIGNING_INFO))


def signing_public(data_key: bytes) -> str:
    # public_bytes_raw, not public_bytes(Encoding.Raw, ...): the serialization module it needs
    # costs every command that checks the record about 10 ms to import.
    return _signing_private(data_key).public_key().public_bytes_raw().hex()


def _history_cipher(data_key: bytes):  # -> ChaCha20Poly1305
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    return ChaCha20Poly1305(_hkdf(data_key, b"", _HISTORY_INFO))


def open_previous_key(entry: Entry, data_key: bytes, previous_key_id: str) -> bytes | None:
    """The data key before `entry`'s, from its sealed copy; None if it does not open."""
    from cryptography.exceptions import InvalidTag

    if not entry.previous_key:
        return None
    raw = bytes.fromhex(entry.previous_key)
    aad = f"{previous_key_id}>{entry.key_id}".encode()
    try:
        return _history_cipher(data_key).decrypt(raw[:12], raw[12:], aad)
    except InvalidTag:
        return None


# --- parsing (untrusted bytes to typed entries) --------------------------------------------


def parse(data: bytes, where: str) -> tuple[Entry, ...]:
    """Typed entries from the record's bytes, every field checked; no signature checked yet."""
    if len(data) > MAX_RECORD_BYTES:
        raise TrustError(where, f"the key record is larger than {MAX_RECORD_BYTES} bytes")
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise TrustError(where, "the key record is empty")
    if len(lines) > MAX_ENTRIES:
        raise TrustError(where, f"the key record has more than {MAX_ENTRIES} entries")
    return tuple(_parse_line(line, n, where) for n, line in enumerate(lines))


def _parse_line(line: bytes, n: int, where: str) -> Entry:
    def bad(detail: str) -> TrustError:
        return TrustError(where, f"key record line {n + 1}: {detail}", "restore it from git")

    if len(line) > MAX_LINE_BYTES:
        raise bad("too long")
    try:
        outer = json.loads(line.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("not JSON") from None
    if not isinstance(outer, dict) or set(outer) != {"entry", "sig_prev", "sig_self"}:
        raise bad("expected the fields entry, sig_prev, sig_self")
    body = outer["entry"]
    if not isinstance(body, dict) or set(body) != _FIELDS:
        raise bad(f"an entry has exactly the fields {', '.join(sorted(_FIELDS))}")
    if type(body["v"]) is not int or body["v"] != RECORD_VERSION:
        raise bad(f"unknown record version (this sst-vault reads {RECORD_VERSION}): upgrade it?")
    seq = body["seq"]
    if type(seq) is not int or seq != n:
        raise bad(f"seq must be {n}")
    texts = {k: body[k] for k in ("prev", "app", "key_id", "signing_key", "previous_key", "by")}
    texts |= {"time": body["time"], "sig_prev": outer["sig_prev"], "sig_self": outer["sig_self"]}
    for name, value in texts.items():
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise bad(f"{name} must be a string of at most {MAX_TEXT} characters")
    if (n == 0) != (body["prev"] == "") or (body["prev"] and not _HEX64.fullmatch(body["prev"])):
        raise bad("prev must be empty on the first line and a SHA-256 hex digest after it")
    if not _KEY_ID.fullmatch(body["key_id"]):
        raise bad("key_id is not an svk1- key id")
    if not _HEX64.fullmatch(body["signing_key"]):
        raise bad("signing_key is not 32 bytes of hex")
    if body["previous_key"] and not re.fullmatch(r"(?:[0-9a-f]{2}){60}", body["previous_key"]):
        raise bad("previous_key is not a sealed 32-byte key")
    if not re.fullmatch(r"[0-9a-f]{128}", outer["sig_self"]) or not (
        re.fullmatch(r"[0-9a-f]{128}", outer["sig_prev"]) if n else outer["sig_prev"] == ""
    ):
        raise bad("a signature is not 64 bytes of hex (sig_prev is empty on the first line)")
    recipients = body["recipients"]
    if not isinstance(recipients, dict) or len(recipients) > MAX_RECIPIENTS:
        raise bad(f"recipients must map at most {MAX_RECIPIENTS} names to public keys")
    for name, public in recipients.items():
        if not _NAME.fullmatch(name) or not isinstance(public, str) or len(public) > MAX_TEXT:
            raise bad("a recipient name or public key is malformed")
    supersedes = body["supersedes"]
    if supersedes != []:
        # Reserved: a fork could only be settled by the keys of both branches, and no version
        # of sst-vault writes one. A non-empty list would let a removed member's fork name
        # the real entries it abandons, so it is refused rather than ignored.
        raise bad("supersedes must be empty in record version 1")
    return Entry(
        seq=seq,
        prev=body["prev"],
        app=body["app"],
        key_id=body["key_id"],
        signing_key=body["signing_key"],
        recipients=dict(recipients),
        previous_key=body["previous_key"],
        supersedes=tuple(supersedes),
        by=body["by"],
        time=body["time"],
        sig_prev=outer["sig_prev"],
        sig_self=outer["sig_self"],
        body=_canonical(body),
    )


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate field {key}")
        out[key] = value
    return out


# --- verification ---------------------------------------------------------------------------


def verify(entries: tuple[Entry, ...], where: str, app: str | None = None) -> Record:
    """Check every link and signature, in order from entry 0 (the TUF root-rotation walk)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    def check(signer: str, signature: str, entry: Entry, which: str) -> None:
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(signer)).verify(
                bytes.fromhex(signature), _SIGNATURE_CONTEXT + entry.body
            )
        except (InvalidSignature, ValueError):
            raise TrustError(
                where,
                f"key record entry {entry.seq}: bad {which} signature",
                "someone without the data key edited the key record: restore it from git",
            ) from None

    for entry in entries:
        if entry.seq:
            previous = entries[entry.seq - 1]
            if entry.prev != previous.hash:
                raise TrustError(
                    where,
                    f"key record entry {entry.seq} does not follow entry {entry.seq - 1}",
                    "restore the key record from git",
                )
            check(previous.signing_key, entry.sig_prev, entry, "previous key's")
            if entry.app != previous.app:
                raise TrustError(where, f"key record entry {entry.seq} changes the app name")
        check(entry.signing_key, entry.sig_self, entry, "own")
    if app is not None and entries[0].app != app:
        raise TrustError(
            where,
            f"the key record belongs to app {entries[0].app!r}, not {app!r}",
            "restore the key record and sst-vault.toml from git",
        )
    return Record(entries)


def load(data: bytes, where: str, app: str | None = None) -> Record:
    return verify(parse(data, where), where, app)


def entry_hashes(data: bytes) -> list[str] | None:
    """The entry hashes of a record's bytes with no signature checked; None when unparsable."""
    try:
        return [e.hash for e in parse(data, "history")]
    except TrustError:
        return None


# --- building new entries (a member holding the data key) ------------------------------------


def first_entry(
    app: str, data_key: bytes, key_id: str, recipients: dict[str, str], by: str
) -> Record:
    entry = _sign(
        _body(0, "", app, key_id, data_key, recipients, "", [], by), data_key, previous=None
    )
    return Record((entry,))


def append(
    record: Record,
    current_key: bytes,
    new_key: bytes,
    new_key_id: str,
    recipients: dict[str, str],
    by: str,
) -> Record:
    """A new entry signed by the current data key (and the new one, when it differs)."""
    newest = record.newest
    sealed = ""
    if new_key != current_key:
        nonce = os.urandom(12)
        aad = f"{newest.key_id}>{new_key_id}".encode()
        sealed = (nonce + _history_cipher(new_key).encrypt(nonce, current_key, aad)).hex()
    body = _body(
        newest.seq + 1,
        newest.hash,
        newest.app,
        new_key_id,
        new_key,
        recipients,
        sealed,
        [],
        by,
    )
    return Record((*record.entries, _sign(body, new_key, previous=current_key)))


def _body(
    seq: int,
    prev: str,
    app: str,
    key_id: str,
    data_key: bytes,
    recipients: dict[str, str],
    previous_key: str,
    supersedes: list[str],
    by: str,
) -> dict[str, object]:
    return {
        "v": RECORD_VERSION,
        "seq": seq,
        "prev": prev,
        "app": app,
        "key_id": key_id,
        "signing_key": signing_public(data_key),
        "recipients": dict(sorted(recipients.items())),
        "previous_key": previous_key,
        "supersedes": list(supersedes),
        "by": by[:200],
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _sign(body: dict[str, object], data_key: bytes, previous: bytes | None) -> Entry:
    canonical = _canonical(body)
    sig_self = _signing_private(data_key).sign(_SIGNATURE_CONTEXT + canonical).hex()
    sig_prev = (
        _signing_private(previous).sign(_SIGNATURE_CONTEXT + canonical).hex()
        if previous is not None
        else ""
    )
    line = {"entry": body, "sig_prev": sig_prev, "sig_self": sig_self}
    return _parse_line(_canonical(line), int(body["seq"]), "new entry")  # type: ignore[call-overload]


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _line(entry: Entry) -> bytes:
    body = json.loads(entry.body)
    outer = {"entry": body, "sig_prev": entry.sig_prev, "sig_self": entry.sig_self}
    return _canonical(outer) + b"\n"
