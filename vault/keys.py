"""Where the vault's secret comes from, and how it becomes the key that seals files.

Key sources, first found wins: `SST_VAULT_KEY` (one key a line, newest first), the file named by
`SST_VAULT_KEY_FILE`, then the OS keyring entry of this vault. A secret is never taken from an
argument; `SST_VAULT_KEY` and `SST_VAULT_KEY_FILE` leave this process's environment when the CLI
starts (`vault.keyenv`), so no child (git, the command under `run`) inherits them.

age backend: the secret is an age identity, or an unencrypted OpenSSH ed25519 private key (age
accepts SSH keys: a developer can use the key already in `~/.ssh`, and `ssh-ed25519 …` public
keys are recipients); it unwraps the vault's random 32-byte data key from
`<state_dir>/data-key.age`, a standard age file (armored) that the `age` CLI opens too.
fernet backend: the secret is a Fernet key that seals files directly; older keys listed after
the first still open files they sealed.

The key id names the data key (or Fernet key) without revealing it: HKDF-SHA-256 of the secret.
Which data key a member accepts is `vault.trust`'s to decide (the signed key record, the pins).
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vault.envelope import CIPHER_FERNET, CIPHER_STREAM, FileKey, _hkdf
from vault.errors import (
    ConfigError,
    KeyFormatError,
    KeyPinError,
    NoKeyError,
    TamperedError,
    WrongKeyError,
)
from vault.keyenv import ENV_KEY, ENV_KEY_FILE, taken

ENV_KEY_ID = "SST_VAULT_KEY_ID"
BACKENDS = ("age", "fernet")
AGE_PREFIX = "AGE-SECRET-KEY-1"
AGE_PQ_PREFIX = "AGE-SECRET-KEY-PQ-1"
DATA_KEY_SIZE = 32
MAX_KEYS = 16  # a rotation needs two or three; dozens means a pasted file went wrong
SSH_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
SSH_END = "-----END OPENSSH PRIVATE KEY-----"
SSH_ED25519 = "ssh-ed25519"
MAX_SSH_KEY_CHARS = 16 * 1024  # an ed25519 key file is about 400 characters


@dataclass(frozen=True)
class Secret:
    """One parsed secret key. `text` is never printed unless a user asked for it."""

    backend: str
    text: str = field(repr=False)

    def public(self) -> str:
        if self.backend == "age" and is_ssh_private_key(self.text):
            return _ssh_private_info(self.text, "key").public
        if self.backend == "age":
            return str(_age_identity(self.text).to_public())
        return "(fernet keys have no public part)"


class KeyPlace(enum.Enum):
    VARIABLE = "variable"  # SST_VAULT_KEY
    FILE = "file"  # SST_VAULT_KEY_FILE
    KEYRING = "keyring"  # the OS keyring entry of this vault
    GIVEN = "given"  # handed over by a command (`key import` from stdin or --file)


@dataclass(frozen=True)
class KeySource:
    """The secrets found, where they came from (`place`, for decisions) and how to name that
    place in a message (`origin`: "$SST_VAULT_KEY", a file's path, "the OS keyring", "stdin")."""

    secrets: tuple[Secret, ...]
    origin: str
    place: KeyPlace = KeyPlace.GIVEN


# --- generating and parsing ---------------------------------------------------------------


def generate(backend: str = "age") -> Secret:
    if backend == "age":
        from pyrage import x25519

        return Secret("age", str(x25519.Identity.generate()))
    if backend == "fernet":
        from cryptography.fernet import Fernet

        return Secret("fernet", Fernet.generate_key().decode())
    raise ConfigError(f"unknown backend {backend!r}", "use age or fernet")


def parse_secret(text: str, origin: str) -> Secret:
    text = text.strip()
    if is_ssh_private_key(text):
        _ssh_private_info(text, origin)  # refuses encrypted and non-ed25519 keys, clearly
        _age_identity(text, origin)
        return Secret("age", text)
    if text.upper().startswith(AGE_PQ_PREFIX):
        raise KeyFormatError(
            f"{origin}: post-quantum age identities are not supported yet",
            "generate an X25519 identity with `sst-vault key generate` or `age-keygen`",
        )
    if text.upper().startswith(AGE_PREFIX):
        _age_identity(text, origin)
        return Secret("age", text)
    try:
        raw = base64.urlsafe_b64decode(text.encode())
    except (binascii.Error, ValueError):
        raw = b""
    if len(text) == 44 and len(raw) == 32:
        return Secret("fernet", text)
    raise KeyFormatError(
        f"{origin} does not hold an age identity, an OpenSSH ed25519 key or a Fernet key",
        "expected AGE-SECRET-KEY-1…, a 44-character Fernet key (one per line), or an "
        "unencrypted OpenSSH ed25519 private key",
    )


def _age_identity(text: str, origin: str = "key"):  # -> pyrage.x25519.Identity | ssh.Identity
    from pyrage import IdentityError, ssh, x25519

    try:
        if is_ssh_private_key(text):
            return ssh.Identity.from_buffer(text.strip().encode() + b"\n")
        return x25519.Identity.from_str(text.strip())
    except IdentityError:
        what = "OpenSSH key" if is_ssh_private_key(text) else "age identity"
        raise KeyFormatError(
            f"{origin} holds a malformed {what}", "check that the whole key was copied"
        ) from None


# --- SSH keys (age's ssh-ed25519 recipient type) ------------------------------------------


def is_ssh_private_key(text: str) -> bool:
    return text.lstrip().startswith(SSH_BEGIN)


@dataclass(frozen=True)
class SshKeyInfo:
    """What the clear part of an OpenSSH private key file says (no secret is decoded)."""

    key_type: str
    encrypted: bool
    public: str  # `ssh-ed25519 AAAA…`, the line of its .pub file without the comment


def _ssh_private_info(text: str, origin: str) -> SshKeyInfo:
    """Read the clear header of an OpenSSH private key (PROTOCOL.key): cipher and public key.

    Only these are needed to refuse an encrypted or non-ed25519 key with a clear message and
    to name the public key; the private part is left to pyrage. Every length is checked.
    """
    bad = KeyFormatError(
        f"{origin} holds a malformed OpenSSH private key", "check that the whole key was copied"
    )
    body = text.strip()
    if len(body) > MAX_SSH_KEY_CHARS or not body.endswith(SSH_END):
        raise bad
    try:
        blob = base64.b64decode("".join(body[len(SSH_BEGIN) : -len(SSH_END)].split()))
    except (binascii.Error, ValueError):
        raise bad from None
    magic = b"openssh-key-v1\0"
    if not blob.startswith(magic):
        raise bad

    def ssh_string(data: bytes, pos: int) -> tuple[bytes, int]:  # u32 length, then the bytes
        if pos + 4 > len(data):
            raise bad
        end = pos + 4 + int.from_bytes(data[pos : pos + 4], "big")
        if end > len(data):
            raise bad
        return data[pos + 4 : end], end

    cipher, pos = ssh_string(blob, len(magic))
    _kdf, pos = ssh_string(blob, pos)
    _kdf_options, pos = ssh_string(blob, pos)
    if blob[pos : pos + 4] != (1).to_bytes(4, "big"):  # number of keys: always 1
        raise bad
    public_blob, _ = ssh_string(blob, pos + 4)
    key_type = ssh_string(public_blob, 0)[0].decode("ascii", errors="replace")
    if (
        not key_type.replace("-", "").replace("@", "").replace(".", "").isalnum()
        or len(key_type) > 64
    ):
        raise bad  # every OpenSSH key type is a short name like ssh-ed25519
    info = SshKeyInfo(
        key_type,
        cipher != b"none",
        f"{key_type} {base64.b64encode(public_blob).decode()}",
    )
    if info.encrypted:
        raise KeyFormatError(
            f"{origin} holds a passphrase-protected OpenSSH key, which sst-vault cannot unlock",
            "use an age key instead: `sst-vault key generate > me.key`, have a member run "
            "`sst-vault recipients add NAME age1…` with the public key it prints, then "
            "`sst-vault key import --file me.key`",
        )
    if key_type != SSH_ED25519:
        raise KeyFormatError(
            f"{origin} holds an OpenSSH {key_type} key; only {SSH_ED25519} keys are supported",
            "use an ed25519 key (`ssh-keygen -t ed25519`) or an age key (`sst-vault key generate`)",
        )
    return info


def looks_like_secret_key(text: str) -> bool:
    """True for anything that may be a secret key: an age identity, an SSH private key (armored
    or its bare base64 body), a Fernet key. Such text is never echoed in a message."""
    compact = "".join(text.split())
    if "AGE-SECRET-KEY-" in compact.upper() or "PRIVATEKEY" in compact.upper():
        return True
    if "b3BlbnNzaC1rZXktdjE" in compact:  # base64 of "openssh-key-v1": a private key body
        return True
    try:
        raw = base64.urlsafe_b64decode(compact.encode())
    except (binascii.Error, ValueError):
        return False
    return len(compact) == 44 and len(raw) == 32


def parse_recipient(text: str, name: str = "recipient"):  # -> x25519 or ssh Recipient
    """An age recipient: `age1…` (X25519) or an `ssh-ed25519 AAAA… [comment]` public key.

    A secret key given where a public key belongs is refused without showing any of it."""
    from pyrage import RecipientError, ssh, x25519

    if looks_like_secret_key(text):
        raise ConfigError(
            f"{name}: that is a secret key, not a public key (not shown)",
            "give its public key: age1… from `sst-vault key export-public`, or the "
            "ssh-ed25519 line of the SSH key's .pub file",
        )
    words = text.split()
    if words and words[0].startswith("ssh-"):
        if words[0] != SSH_ED25519:
            raise ConfigError(
                f"{name}: {words[0]} keys are not supported as recipients",
                f"use an {SSH_ED25519} key (`ssh-keygen -t ed25519`) or an age1… key",
            )
        try:
            return ssh.Recipient.from_str(" ".join(words[:2]))
        except RecipientError:
            raise ConfigError(
                f"{name}: not a valid {SSH_ED25519} public key",
                "copy the whole line of the SSH key's .pub file",
            ) from None
    try:
        return x25519.Recipient.from_str(text.strip())
    except RecipientError:
        raise ConfigError(
            f"{name}: {text.strip()[:20]}… is not an age X25519 recipient (nor ssh-ed25519)",
            "expected age1… (from `sst-vault key export-public` or `age-keygen -y`), or the "
            "ssh-ed25519 line of an SSH .pub file",
        ) from None


def canonical_recipient(text: str, name: str = "recipient") -> str:
    """The form a recipient is stored and compared in: `age1…`, or `ssh-ed25519 AAAA…` without
    the .pub file's comment (so it equals `Secret.public()` of the matching private key)."""
    parse_recipient(text, name)
    words = text.split()
    return " ".join(words[:2]) if words[0].startswith("ssh-") else text.strip()


def _secret_entries(text: str, origin: str) -> list[str]:
    """The non-empty, non-comment lines of `text`, except that an OpenSSH private key (its
    BEGIN line to its END line) is one entry."""
    entries: list[str] = []
    block: list[str] | None = None
    for line in (ln.strip() for ln in text.splitlines()):
        if block is not None:
            block.append(line)
            if line == SSH_END:
                entries.append("\n".join(block))
                block = None
        elif line == SSH_BEGIN:
            block = [line]
        elif line and not line.startswith("#"):
            entries.append(line)
    if block is not None:
        raise KeyFormatError(
            f"{origin} holds an OpenSSH private key without its END line",
            "check that the whole key was copied",
        )
    return entries


def parse_secrets(text: str, origin: str) -> tuple[Secret, ...]:
    found = tuple(parse_secret(entry, origin) for entry in _secret_entries(text, origin))
    if not found:
        raise NoKeyError(f"{origin} is empty", "put the secret key in it, one per line")
    if len(found) > MAX_KEYS:
        raise KeyFormatError(f"{origin} holds {len(found)} keys, at most {MAX_KEYS} are allowed")
    return found


# --- sources ------------------------------------------------------------------------------


def find_source(vault_id: str | None, *, use_keyring: bool = True) -> KeySource:
    """The first available key source, or NoKeyError saying exactly what to set or install."""
    value = taken(ENV_KEY)
    if value is not None:
        if value.strip():
            origin = f"${ENV_KEY}"
            return KeySource(parse_secrets(value, origin), origin, KeyPlace.VARIABLE)
        raise NoKeyError(f"${ENV_KEY} is set but empty", "set it to the vault's secret key")
    key_file = taken(ENV_KEY_FILE)
    if key_file:
        path = Path(key_file).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise NoKeyError(
                f"${ENV_KEY_FILE}={key_file} cannot be read ({exc.strerror})",
                "point it at the file holding the secret key",
            ) from None
        except UnicodeDecodeError:
            raise KeyFormatError(
                f"${ENV_KEY_FILE}={key_file} holds binary data, not a secret key",
                "point it at the file holding the secret key (text, one key per line)",
            ) from None
        return KeySource(parse_secrets(text, str(path)), str(path), KeyPlace.FILE)
    if use_keyring and vault_id:
        from vault import oskeyring

        text = oskeyring.get(vault_id)
        if text:
            origin = "the OS keyring"
            return KeySource(parse_secrets(text, origin), origin, KeyPlace.KEYRING)
        raise NoKeyError(
            "no key for this vault in the OS keyring",
            f"set {ENV_KEY} (or {ENV_KEY_FILE}), or run `sst-vault key import`",
        )
    raise NoKeyError(
        "no key found", f"set {ENV_KEY} to the vault's secret key (or {ENV_KEY_FILE} to a file)"
    )


# --- data keys and key ids ----------------------------------------------------------------


def key_id_of(secret_bytes: bytes) -> str:
    return "svk1-" + _hkdf(secret_bytes, b"", b"sst-vault/1 key id")[:16].hex()


def wrap_data_key(data_key: bytes, recipients: Iterable[str]) -> bytes:
    """A standard armored age file holding the data key, openable by `age -d -i KEY`."""
    import pyrage

    parsed = [parse_recipient(r) for r in recipients]
    if not parsed:
        raise ConfigError(
            "the vault has no recipients", "add one with `sst-vault init --recipient`"
        )
    return pyrage.encrypt(data_key, parsed, armored=True)


def unwrap_data_key(wrapped: bytes, secrets: Iterable[Secret], path: Path) -> bytes:
    import pyrage

    identities = [_age_identity(s.text) for s in secrets if s.backend == "age"]
    if not identities:
        raise WrongKeyError(
            path,
            "the key is a Fernet key but this vault uses age",
            "set SST_VAULT_KEY to an age identity (AGE-SECRET-KEY-1…)",
        )
    try:
        # The age spec allows surrounding whitespace around armor; pyrage does not.
        data_key = pyrage.decrypt(wrapped.strip(), identities)
    except pyrage.DecryptError as exc:
        if "no matching keys" in str(exc).lower():
            raise WrongKeyError(
                path,
                "this key is not a recipient of the vault",
                "use a key that was added with `sst-vault recipients add`",
            ) from None
        reason = " ".join(str(exc).split())  # one line, whatever the age library says
        raise TamperedError(path, f"age: {reason}", "restore it from git") from None
    if len(data_key) != DATA_KEY_SIZE:
        raise TamperedError(path, "the data key has the wrong size", "restore it from git")
    return data_key


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_SIZE)


@dataclass(frozen=True)
class VaultKeys:
    """The keys that seal (first) and open files, with the pin check applied."""

    sealing: FileKey
    opening: dict[str, FileKey]
    origin: str

    def for_id(self, key_id: str) -> FileKey | None:
        return self.opening.get(key_id)


def data_file_key(data_key: bytes) -> FileKey:
    return FileKey(key_id_of(data_key), CIPHER_STREAM, data_key)


def fernet_file_key(secret: Secret) -> FileKey:
    raw = base64.urlsafe_b64decode(secret.text.encode())
    return FileKey(key_id_of(raw), CIPHER_FERNET, secret.text.encode())


def check_pin(key_id: str, pinned: str | None, where: str) -> None:
    if pinned and pinned.strip() and pinned.strip() != key_id:
        raise KeyPinError(
            f"the vault's data key {key_id} is not the pinned {pinned.strip()} ({where})",
            "someone replaced the data key in the repo: check `git log` of it before trusting it",
        )


def pinned_key_id() -> str | None:
    value = os.environ.get(ENV_KEY_ID)
    return value.strip() if value and value.strip() else None


def ensure_backend(source: KeySource, backend: str) -> None:
    wrong = [s for s in source.secrets if s.backend != backend]
    if wrong:
        raise KeyFormatError(
            f"{source.origin} holds a {wrong[0].backend} key but this vault uses {backend}",
            f"give it the vault's {backend} key",
        )
