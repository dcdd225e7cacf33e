"""How a key holder sees SST's files: checkpoints pretty-printed, secret values masked.

SST's `secret` file is AES-GCM under the stage's passphrase; opened here only to show it.
A masked value carries a short keyed fingerprint (HMAC under the vault key, so it cannot be
brute-forced without that key) so a change of value still shows up in a diff. Passphrases
are never rendered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from vault.envelope import FileKey

SST_NONCE_SIZE = 12  # SST's secret files: 12-byte nonce, then AES-GCM under the passphrase
MASK_FP_LEN = 8


class SecretsUnreadable(Exception):
    """Internal: a `secret` file that the given passphrase does not open."""


def open_sst_secrets(passphrase: bytes, data: bytes) -> dict[str, str]:
    """SST's secret file: nonce || AES-GCM(base64-decoded passphrase) of a JSON map."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        key = base64.b64decode(passphrase.strip(), validate=True)
        plain = AESGCM(key).decrypt(data[:SST_NONCE_SIZE], data[SST_NONCE_SIZE:], None)
        values = json.loads(plain)
    except (ValueError, InvalidTag, TypeError) as exc:
        raise SecretsUnreadable(type(exc).__name__) from None
    if not isinstance(values, dict):
        raise SecretsUnreadable("not a map")
    return {str(k): str(v) for k, v in values.items()}


def mask(key: FileKey, stage: str, name: str, value: str) -> str:
    """A masked secret value that still changes when the value does (keyed, not guessable)."""
    mac = hmac.new(key.fingerprint_key(), digestmod=hashlib.sha256)
    mac.update(b"sst-vault/1 secret value\0" + f"{stage}\0{name}\0".encode() + value.encode())
    return f"<hidden {mac.hexdigest()[:MASK_FP_LEN]}>"


def render_app(plain: bytes) -> list[str]:
    """Pretty-printed JSON (2-space indent, key order kept) of a checkpoint."""
    try:
        value = json.loads(plain)
    except (ValueError, RecursionError):
        return plain.decode(errors="replace").splitlines()
    return json.dumps(value, indent=2, ensure_ascii=False).splitlines()


def render_secrets(
    values: dict[str, str], key: FileKey, stage: str, show_secrets: bool
) -> list[str]:
    shown = {
        name: value if show_secrets else mask(key, stage, name, value)
        for name, value in sorted(values.items())
    }
    return json.dumps(shown, indent=2, ensure_ascii=False).splitlines()


def resource_count(plain: bytes) -> int | None:
    """How many resources the checkpoint's latest deployment holds."""
    try:
        checkpoint = json.loads(plain)["checkpoint"]
        latest = checkpoint.get("latest") or {}
        return len(latest.get("resources") or [])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


__all__ = [
    "SecretsUnreadable",
    "mask",
    "open_sst_secrets",
    "render_app",
    "render_secrets",
    "resource_count",
]
