"""A developer's OS keyring entries of a vault: the secret (import, forget) and the key-id pin.

The secret is stored under username `vault:<vault_id>` (`vault.keys`), only after it proved to
open this vault, and never over a different key already there unless asked to.

The pin is trust on first unlock.
CI pins the vault's data key with `SST_VAULT_KEY_ID`. A developer whose secret lives in the
keyring gets the same protection without setting anything: the first successful unlock stores
the data key's id next to the secret (username `pin:<vault_id>`, not a secret), and every later
unlock refuses a different data key until `sst-vault key trust` has shown who changed
`data-key.age` in git and the user confirmed it. This matters for the age backend only, where
the data key comes from the repository and anyone who can push could replace it; a Fernet key
is the secret itself and cannot be swapped through the repo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vault import envelope, keys, safefs
from vault.errors import KeyPinError, NoKeyError, RefusedError, WrongKeyError
from vault.paths import KINDS

if TYPE_CHECKING:
    from vault.project import Project
    from vault.team import Change

PIN_PREFIX = "pin:"


def pin_username(vault_id: str) -> str:
    return f"{PIN_PREFIX}{vault_id}"


def is_keyring_source(source: keys.KeySource) -> bool:
    """True when `source` (from `keys.find_source`) is the OS keyring, not a variable or file."""
    return source.origin != f"${keys.ENV_KEY}" and not os.environ.get(keys.ENV_KEY_FILE)


def _cannot(action: str, exc: Exception) -> NoKeyError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return NoKeyError(
        f"the OS keyring cannot be {action} ({reason})",
        "unlock the keyring (or restart its daemon) and retry",
    )


def get_pin(vault_id: str) -> str | None:
    keyring = keys._keyring()
    try:
        value = keyring.get_password(keys.KEYRING_SERVICE, pin_username(vault_id))
    except Exception as exc:  # KeyringError, or a D-Bus error the backend let through
        raise _cannot("read", exc) from None
    return value.strip() if value and value.strip() else None


def set_pin(vault_id: str, key_id: str) -> None:
    keyring = keys._keyring()
    try:
        keyring.set_password(keys.KEYRING_SERVICE, pin_username(vault_id), key_id)
    except Exception as exc:  # KeyringError, or a D-Bus error the backend let through
        raise _cannot("written", exc) from None


def delete_pin(vault_id: str) -> bool:
    keyring = keys._keyring()
    from keyring.errors import PasswordDeleteError

    try:
        keyring.delete_password(keys.KEYRING_SERVICE, pin_username(vault_id))
    except PasswordDeleteError:
        return False
    except Exception as exc:  # KeyringError, or a D-Bus error the backend let through
        raise _cannot("written", exc) from None
    return True


def delete_key(vault_id: str) -> bool:
    """Delete the vault's secret from the keyring; False when there was none."""
    return keys.keyring_delete(vault_id)


def check_or_pin(vault_id: str, key_id: str) -> bool:
    """Refuse a data key other than the pinned one; pin `key_id` when nothing is pinned yet.

    Returns True when this call pinned it (the first unlock on this machine).
    """
    pinned = get_pin(vault_id)
    if pinned is None:
        set_pin(vault_id, key_id)
        return True
    if pinned != key_id:
        raise KeyPinError(
            f"the vault's data key changed to {key_id}, but your keyring trusts {pinned}",
            "if a member rotated it, review the change and accept it with `sst-vault key trust`",
        )
    return False


# --- importing, forgetting, trusting --------------------------------------------------------


@dataclass
class ImportReport:
    key_id: str  # the vault's data key id (age) or the newest Fernet key's id
    public: str | None
    unchanged: bool = False  # the keyring already held exactly this
    replaced: bool = False  # a different key was overwritten (--replace)
    pinned: bool = False  # this import pinned the data key (first unlock on this machine)
    pin_conflict: str | None = None  # the pinned id, when the vault's data key differs from it
    warnings: list[str] = field(default_factory=list)


def import_key(project: Project, text: str, origin: str, *, replace: bool = False) -> ImportReport:
    """Store a secret in the keyring entry of this vault, after checking that it opens it."""
    source = keys.KeySource(keys.parse_secrets(text, origin), origin)
    keys.ensure_backend(source, project.config.backend)
    vault_id = project.config.vault_id
    report = ImportReport(
        "", source.secrets[0].public() if project.config.backend == "age" else None
    )
    if project.config.backend == "age":
        report.key_id = project.unlock(source).sealing.key_id  # WrongKeyError if not a recipient
    else:
        report.key_id = keys.fernet_file_key(source.secrets[0]).key_id
        if not _fernet_opens(project, source):
            report.warnings.append("the vault has no files yet to check this key against")
    existing = keys.keyring_get(vault_id)
    if existing is not None:
        if _texts(existing) == [s.text for s in source.secrets]:
            report.unchanged = True
        elif not replace:
            raise RefusedError(
                "the OS keyring already holds a different key for this vault",
                "keep it, or run `sst-vault key forget` first (or pass --replace) to overwrite it",
            )
        else:
            report.replaced = True
    if not report.unchanged:
        keys.keyring_set(vault_id, source.secrets)
    if project.config.backend == "age":
        pinned = get_pin(vault_id)
        if pinned is None:
            set_pin(vault_id, report.key_id)
            report.pinned = True
        elif pinned != report.key_id:
            report.pin_conflict = pinned
    return report


def _texts(stored: str) -> list[str]:
    return [ln.strip() for ln in stored.splitlines() if ln.strip() and not ln.startswith("#")]


def _fernet_opens(project: Project, source: keys.KeySource) -> bool:
    """Every current vault file is sealed under one of these Fernet keys (False: no files)."""
    ids = {keys.fernet_file_key(s).key_id for s in source.secrets}
    seen = False
    for stage in sorted(project.repo.stages()):
        for kind in KINDS:
            handle = safefs.open_read(project.root, project.repo.vault_parts(kind, stage))
            if handle is None:
                continue
            path = project.repo.vault_file(kind, stage)
            with handle:
                header, _ = envelope.read_header(handle, path)
            if header.key_id not in ids:
                raise WrongKeyError(
                    path,
                    f"sealed under key id {header.key_id}, not under the key given",
                    "import the vault's Fernet key (every line of it during a rotation)",
                )
            seen = True
    return seen


def forget(project: Project) -> tuple[bool, bool]:
    """Delete the vault's secret and pin from the keyring: (key was there, pin was there)."""
    had_key = delete_key(project.config.vault_id)
    had_pin = delete_pin(project.config.vault_id)
    return had_key, had_pin


@dataclass
class TrustInfo:
    current: str  # the key id of the data key now in the repo
    pinned: str | None  # what the keyring trusts (None: nothing yet, or no usable keyring)
    keyring: bool  # whether a keyring pin can be written
    change: Change | None  # the last commit of data-key.age
    uncommitted: bool  # data-key.age differs from HEAD in this working tree


def trust_info(project: Project) -> TrustInfo:
    from vault import team

    team.require_age(project, "key trust")
    current = project.unlock().sealing.key_id  # no pin applied: this is what we show
    try:
        pinned, usable = get_pin(project.config.vault_id), True
    except NoKeyError:
        if project.key_from_keyring:
            raise
        pinned, usable = None, False
    path = project.repo.data_key_file
    return TrustInfo(
        current,
        pinned,
        usable,
        team.last_change(project, path),
        team.has_uncommitted_changes(project, path),
    )


def trust(project: Project, key_id: str) -> None:
    set_pin(project.config.vault_id, key_id)
