"""`prepare`: decrypt a stage's vault files into the SST home, all of them or none.

Everything is checked before anything is written; the files and the sync records are
replaced in one journaled transaction of the home, so a kill leaves the home as it was or,
once journaled, rolled forward. A home change never committed is refused (or backed up with
--force).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from vault import envelope, safefs
from vault.envelope import FileKey, Header
from vault.errors import RefusedError, UsageError, WrongKeyError, from_os_error
from vault.paths import KINDS
from vault.project import Project
from vault.records import Records
from vault.stagefiles import (
    Discard,
    FileAction,
    HomeFile,
    diverged,
    home_changed,
    home_journal,
    home_lock,
    read_repo_header,
    repo_changed,
    repo_lock,
)


@dataclass
class PrepareReport:
    """What `prepare` did, file by file."""

    actions: list[FileAction] = field(default_factory=list)


def prepare(
    project: Project, stages: list[str], *, force: bool = False, missing_ok: bool = False
) -> PrepareReport:
    """Decrypt the stages' vault files into the SST home, all of them or none.

    `missing_ok` (used by `run`) lets a stage with no vault files pass: a first deploy.
    """
    from vault.worktree import refuse_conflicts

    report = PrepareReport()
    refuse_conflicts(project, stages, "prepare", quick=True)
    # One journaled transaction for every file of every stage and the records that describe
    # them: a kill at any point leaves the home as it was or, once journaled, rolled forward.
    # The repository's lock too (after the home's, the one order of `change.Change`): a change
    # swapping a stage's vault files meanwhile must not hand us half of them.
    with home_lock(project), repo_lock(project), safefs.Transaction(home_journal(project)) as txn:
        records = Records(project)
        plan: list[tuple[str, str, Header, BinaryIO, FileKey]] = []
        backups: list[tuple[HomeFile, str]] = []
        try:
            for stage in stages:
                found_any = False
                for kind in KINDS:
                    found = read_repo_header(project, stage, kind)
                    if found is None:
                        continue
                    found_any = True
                    header, handle = found
                    plan.append(
                        (stage, kind, header, handle, _opening_key(project, header, kind, stage))
                    )
                if not found_any and not missing_ok:
                    known = sorted(project.repo.stages())
                    raise UsageError(
                        f"stage {stage!r} has no vault files in {project.repo.state_root}",
                        f"known stages: {', '.join(known)}" if known else "commit it first",
                    )
            # Check everything before writing anything.
            todo = []
            for stage, kind, header, handle, key in plan:
                home = HomeFile(project, stage, kind)
                if home.fingerprint(key) == header.fingerprint:
                    # The header is not authenticated until the body is: a tampered file
                    # whose header still matches the home must fail, not pass as unchanged.
                    envelope.open_(
                        handle,
                        Discard(),
                        key,
                        project.repo.vault_file(kind, stage),
                        app=project.app,
                        stage=stage,
                        kind=kind,
                        check_fingerprint=False,
                    )
                    records.confirm(stage, kind, header, "prepare", force)
                    report.actions.append(FileAction(stage, kind, "unchanged", header.serial))
                    continue
                record = records.get(stage, kind)
                if record and header.serial < record.serial and not force:
                    raise RefusedError(
                        f"{project.repo.vault_file(kind, stage)} has serial {header.serial}, older "
                        f"than serial {record.serial} last synced into this SST home",
                        "pull the latest commit, or pass --force to go back to it",
                    )
                if home_changed(home, record, project):
                    if not force and record is not None and repo_changed(header, record):
                        raise diverged(stage, kind, header.serial, record.serial)
                    if not force:
                        raise RefusedError(
                            f"{home.path} has changes that were never committed",
                            f"run `sst-vault commit {stage}` first, or pass --force to overwrite"
                            " it (a backup is kept)",
                        )
                    backups.append((home, stage))
                todo.append((stage, kind, header, handle, key))
            for stage, kind, header, handle, key in todo:
                path = project.repo.vault_file(kind, stage)
                parts = project.home.state_parts(kind, project.app, stage)
                try:
                    with safefs.AtomicWriter(project.home.root, parts, 0o600) as out:
                        envelope.open_(
                            handle,
                            out.streaming(),
                            key,
                            path,
                            app=project.app,
                            stage=stage,
                            kind=kind,
                            check_fingerprint=False,
                        )
                        txn.add(out.finish())
                except OSError as exc:  # disk full, read-only: name the file being written
                    raise from_os_error(exc, project.home.root.joinpath(*parts)) from None
                records.set(stage, kind, header, "prepare")
                report.actions.append(FileAction(stage, kind, "written", header.serial))
            for home, stage in backups:
                backup = _backup(project, home, stage)
                for action in report.actions:
                    if action.stage == stage and home.parts[1] == action.kind:
                        action.backup = backup
            txn.add(records.pending())
            txn.commit()
        finally:
            for *_, handle, _key in plan:
                handle.close()
    return report


def _opening_key(project: Project, header: Header, kind: str, stage: str) -> FileKey:
    key = project.keys.for_id(header.key_id)
    if key is None:
        raise WrongKeyError(
            project.repo.vault_file(kind, stage),
            f"sealed under key id {header.key_id}, not under any key given "
            f"({', '.join(project.keys.opening)})",
            "use the vault's current key, or pull the latest commit",
        )
    return key


def _backup(project: Project, home: HomeFile, stage: str) -> Path:
    """Keep the home file that --force is about to overwrite, next to the sync records."""
    data = home.read() or b""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{time.monotonic_ns() % 10**6:06d}"
    parts = (".sst-vault", "backup", project.app, stage, f"{home.parts[1]}-{stamp}.json")
    safefs.write_atomic(project.home.root, parts, data)
    return project.home.root.joinpath(*parts)
