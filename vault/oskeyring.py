"""The OS keyring (the `keyring` library): every call sst-vault makes to it, in one place.

A developer's secret key lives here, under service `sst-vault` and username
`vault:<vault_id>` (so several vaults on one machine never mix). Every failure of the OS
keyring, whatever the backend lets through, becomes one `NoKeyError` line that names what to
install or set. `keyring` is imported only when a keyring call is made: it is slow to import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import TypeVar

from vault.errors import NoKeyError
from vault.keyenv import ENV_KEY, ENV_KEY_FILE

SERVICE = "sst-vault"
LEGACY_PIN_PREFIX = "pin:"  # sst-vault 0.1 pinned the data key id here; `key forget` removes it


def username(vault_id: str) -> str:
    return f"vault:{vault_id}"


_NO_KEYRING_HINT = (
    f"set {ENV_KEY} (or {ENV_KEY_FILE}); or install a keyring backend: on Linux "
    "gnome-keyring or KeePassXC (Secret Service) with a D-Bus session, "
    "or `pip install keyrings.alt`"
)


def backend():  # -> the keyring module, or NoKeyError when no backend can be used
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:  # pragma: no cover - keyring is a dependency
        raise NoKeyError("the keyring package is not installed", _NO_KEYRING_HINT) from None
    try:
        backend = keyring.get_keyring()
    except (RuntimeError, ImportError, AttributeError, ValueError) as exc:
        # A backend named by PYTHON_KEYRING_BACKEND or keyringrc.cfg that cannot run here (the
        # Secret Service without a D-Bus session) raises RuntimeError; a misspelled one, the rest.
        raise NoKeyError(
            f"the configured keyring backend cannot be used ({_one_line(exc)})", _NO_KEYRING_HINT
        ) from None
    if isinstance(backend, fail.Keyring):
        raise NoKeyError("no OS keyring backend is available", _NO_KEYRING_HINT)
    return keyring


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


T = TypeVar("T")


def _keyring_call(action: str, call: Callable[[], T]) -> T:
    """Run one keyring operation; any failure of the OS keyring becomes a one-line NoKeyError."""
    from keyring.errors import KeyringError

    try:
        return call()
    except KeyringError as exc:
        reason = _one_line(exc)
    except Exception as exc:
        # Backends let their transport's errors through (jeepney's D-Bus errors, secretstorage's
        # "service not available" when the daemon went away between two calls).
        reason = f"{type(exc).__name__}: {_one_line(exc)}"
    raise NoKeyError(f"the OS keyring cannot be {action} ({reason})", _NO_KEYRING_HINT)


def get(vault_id: str) -> str | None:
    keyring = backend()
    return _keyring_call("read", lambda: keyring.get_password(SERVICE, username(vault_id)))


def put(vault_id: str, secret_texts: Iterable[str]) -> None:
    """Store the secret keys' texts (one a line, newest first) as this vault's entry."""
    keyring = backend()
    text = "\n".join(secret_texts)
    _keyring_call("written", lambda: keyring.set_password(SERVICE, username(vault_id), text))


def delete(vault_id: str) -> bool:
    """Forget this vault's key; False when there was no entry to forget."""
    keyring = backend()
    from keyring.errors import PasswordDeleteError

    def delete() -> bool:
        try:
            keyring.delete_password(SERVICE, username(vault_id))
        except PasswordDeleteError:
            return False
        return True

    return _keyring_call("written", delete)


def delete_legacy_pin(vault_id: str) -> None:
    """Remove sst-vault 0.1's data key pin of this vault, if the keyring still has one."""
    keyring = backend()
    from keyring.errors import PasswordDeleteError

    def delete_pin() -> None:
        with contextlib.suppress(PasswordDeleteError):
            keyring.delete_password(SERVICE, f"{LEGACY_PIN_PREFIX}{vault_id}")

    _keyring_call("written", delete_pin)
