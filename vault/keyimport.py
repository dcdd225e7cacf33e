"""A member's key in this machine's OS keyring: import (once it opens the vault), forget.

The secret is stored under username `vault:<vault_id>` (`vault.oskeyring`), only after it
proved to open this vault through every trust check (`vault.trust`), and never over a
different key already there unless asked to. Trust itself needs no keyring: this machine
remembers the vault's identity and the newest key record entry it accepted (`vault.trust`),
for keys from the keyring and from variables alike; reviewing a changed identity is
`vault.trustchange`'s.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vault import keys, oskeyring, trust
from vault.errors import KeyPinError, NoKeyError, RefusedError

if TYPE_CHECKING:
    from vault.project import Project


@dataclass
class ImportReport:
    key_id: str  # the vault's data key id (age) or the newest Fernet key's id
    public: str | None
    unchanged: bool = False  # the keyring already held exactly this
    replaced: bool = False  # a different key was overwritten (--replace)
    warnings: list[str] = field(default_factory=list)


def import_key(project: Project, text: str, origin: str, *, replace: bool = False) -> ImportReport:
    """Store a secret in the keyring entry of this vault, after checking that it opens it."""
    source = keys.KeySource(keys.parse_secrets(text, origin), origin)
    keys.ensure_backend(source, project.config.backend)
    vault_id = project.config.vault_id
    if project.config.backend == "age":
        # Every trust check but this machine's memory of the identity (WrongKeyError if not a
        # recipient): a key for a re-created vault can be stored, and `key trust` decides.
        trusted = project.verify_record(source, accept_identity=True, remember=False)
        report = ImportReport(trusted.sealing.key_id, source.secrets[0].public())
        memory = trust.recall(project.home, project.app)
        places = project.places()
        try:
            if memory is None and not trust.env_pin(trust.ENV_PIN):  # new here: a renamed app?
                trust.check_place(project.home, project.app, places)
        except KeyPinError as exc:
            report.warnings.append(f"{exc}; the key is stored, the vault is not trusted yet")
        else:
            if memory is None or memory.identity == trusted.record.identity:
                trust.remember(
                    project.home, project.app, trusted.record, places=places, create=True
                )
        if memory is not None and memory.identity != trusted.record.identity:
            report.warnings.append(
                f"this machine trusts the vault {memory.identity}, not {trusted.record.identity}"
                ": review the change with `sst-vault key trust` before using the vault"
            )
    else:
        opened = project.unlock(source)
        report = ImportReport(opened.sealing.key_id, None)
        if not _fernet_opens(project, opened):
            report.warnings.append("the vault has no files yet to check this key against")
    existing = oskeyring.get(vault_id)
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
        oskeyring.put(vault_id, [s.text for s in source.secrets])
    return report


def _texts(stored: str) -> list[str]:
    return [ln.strip() for ln in stored.splitlines() if ln.strip() and not ln.startswith("#")]


def _fernet_opens(project: Project, opened: keys.VaultKeys) -> bool:
    """Every current vault file is sealed under one of these Fernet keys (False: no files)."""
    from vault import envelope, safefs
    from vault.errors import WrongKeyError
    from vault.paths import KINDS

    seen = False
    for stage in sorted(project.repo.stages()):
        for kind in KINDS:
            handle = safefs.open_read(project.root, project.repo.vault_parts(kind, stage))
            if handle is None:
                continue
            path = project.repo.vault_file(kind, stage)
            with handle:
                header, _ = envelope.read_header(handle, path)
            if opened.for_id(header.key_id) is None:
                raise WrongKeyError(
                    path,
                    f"sealed under key id {header.key_id}, not under the key given",
                    "import the vault's Fernet key (every line of it during a rotation)",
                )
            seen = True
    return seen


def forget(project: Project) -> bool:
    """Delete the vault's secret from the keyring (and 0.1's pin entry); True if it was there."""
    had_key = oskeyring.delete(project.config.vault_id)
    with contextlib.suppress(NoKeyError):
        oskeyring.delete_legacy_pin(project.config.vault_id)
    return had_key


__all__ = ["ImportReport", "forget", "import_key"]
