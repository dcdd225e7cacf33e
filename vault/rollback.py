"""`rollback`: restore a stage's files as they were at a commit, as a new commit.

History is never rewritten: the old plaintext is sealed again under the current key with
serials above the current ones, so every clone sees a newer state. Only versions under the
vault's current keys are restored (an older key may be known to a removed member). The files
are written and committed as one `change.Change` (its locks, its all-or-nothing swap).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vault import envelope
from vault.change import Change
from vault.envelope import FileKey
from vault.errors import RefusedError, UsageError, WrongKeyError
from vault.gitstore import resolve_commit, run_git
from vault.paths import KINDS, check_stage
from vault.records import Records
from vault.versions import WORK, Side, Version, open_version, repo_rel

if TYPE_CHECKING:
    from vault.project import Project


@dataclass
class RollbackAction:
    kind: str
    action: str  # "restored", "unchanged", "kept" (absent at REV)
    serial: int | None = None
    from_serial: int | None = None


@dataclass
class RollbackReport:
    stage: str
    rev: str
    actions: list[RollbackAction] = field(default_factory=list)
    commit: str | None = None


def rollback(project: Project, stage: str, rev: str) -> RollbackReport:
    """Restore the stage's files as they were at `rev`, as a new commit with fresh serials.

    History is never rewritten: the restored plaintext is sealed again under the current key,
    with a serial above the current one, so every clone sees a newer state and `prepare`
    applies it.
    """
    stage = check_stage(stage)
    key = project.keys.sealing
    with Change(project) as change:
        top = change.store.top
        commit_id = resolve_commit(top, rev)
        report = RollbackReport(stage, rev)
        dirty = run_git(
            top,
            "status",
            "--porcelain",
            "--",
            *(repo_rel(project, top, project.repo.vault_parts(k, stage)) for k in KINDS),
        ).out
        if dirty.strip():
            raise RefusedError(
                f"the vault files of {stage} have uncommitted changes",
                f"commit them (`sst-vault commit {stage}`) or restore them with "
                "`git checkout -- <file>` first",
            )
        old_side = Side(project, top, commit_id, rev)
        work_side = Side(project, top, WORK)
        olds = {k: old_side.read(stage, k) for k in KINDS}
        if all(v.raw is None for v in olds.values()):
            raise UsageError(
                f"stage {stage!r} has no vault files at {rev}",
                f"see `sst-vault log {stage}` for its commits",
            )
        records = Records(project)
        for kind in KINDS:
            current = work_side.read(stage, kind)
            report.actions.append(
                _restore_one(project, records, change, key, stage, olds[kind], current)
            )
        restored = [a for a in report.actions if a.action == "restored"]
        summary = ", ".join(f"{a.kind} serial {a.from_serial} as {a.serial}" for a in restored)
        # `--to 1a2b3c4d` names the commit already: say it once; a branch, tag or HEAD~2 is
        # worth keeping next to the commit it meant at the time.
        target = (
            commit_id[:12] if commit_id.startswith(rev.lower()) else f"{rev} ({commit_id[:12]})"
        )
        message = f"sst-vault: roll back {project.app}/{stage} to {target}\n\n{summary}"
        # Nothing restored: no commit (Change.commit returns None without touching anything).
        report.commit = change.commit(message, own=False)
    return report


def _restore_one(
    project: Project,
    records: Records,
    change: Change,
    key: FileKey,
    stage: str,
    old: Version,
    current: Version,
) -> RollbackAction:
    kind = old.kind
    if old.raw is None:
        return RollbackAction(kind, "kept")
    # Current keys only: a file sealed under a data key from before a rotation could have
    # been forged by a removed member who still knows that key.
    try:
        open_version(project, old, stage, past_keys=False)
    except WrongKeyError:
        key_id = envelope.read_header(io.BytesIO(old.raw), old.label)[0].key_id
        raise RefusedError(
            f"{old.label} is sealed under key id {key_id}, from before a key rotation",
            "rollback restores only versions under the vault's current keys (fernet: give the "
            "old key too in SST_VAULT_KEY); pick a later commit from `sst-vault log`",
        ) from None
    assert old.header is not None and old.plain is not None
    current_serial = 0
    if current.raw is not None:
        cur_header, _ = envelope.read_header(io.BytesIO(current.raw), current.label)
        envelope.check_header(cur_header, current.label, app=project.app, stage=stage, kind=kind)
        current_serial = cur_header.serial
        if cur_header.key_id == key.key_id and cur_header.fingerprint == envelope.fingerprint(
            key, old.plain
        ):
            return RollbackAction(kind, "unchanged", cur_header.serial, old.header.serial)
    record = records.get(stage, kind)
    serial = max(current_serial, record.serial if record else 0, old.header.serial) + 1
    change.seal(stage, kind, io.BytesIO(old.plain), key=key, serial=serial)
    return RollbackAction(kind, "restored", serial, old.header.serial)


__all__ = ["RollbackAction", "RollbackReport", "rollback"]
