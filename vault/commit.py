"""`commit`: seal a stage's SST home files into the work tree and commit exactly those files.

What changes is decided here: which kinds differ from the vault files, refusing to overwrite a
newer vault file (or a diverged stage) without --force, the JSON check, the message. How it is
written, swapped in, committed and pushed, under which locks, is `change.Change`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass, field

from vault import envelope, safefs
from vault.change import Change
from vault.envelope import FileKey
from vault.errors import RefusedError, UsageError, from_os_error
from vault.paths import KINDS
from vault.project import Project
from vault.records import Records
from vault.sealing import (
    COMMIT_COMPRESSION_LEVEL,
    FROM_HOME,
    OVERLAP_MIN,
    JsonCheckProcess,
    Validation,
    validate_state,
)
from vault.stagefiles import (
    FileAction,
    HomeFile,
    diverged,
    home_changed,
    read_repo_header,
    repo_file_opens,
)


def _workers_beside_child() -> int:
    """Sealing threads while the JSON check's child runs: the cores it leaves free (the seal
    pool on every core as well made the child and the pool take turns, and gained nothing)."""
    return max(1, min((os.cpu_count() or 1) - 1, 4))


@dataclass
class CommitReport:
    actions: list[FileAction] = field(default_factory=list)
    commit: str | None = None
    pushed: bool = False
    pushed_earlier: int = 0  # with nothing to commit: earlier local commits the push carried


def commit(
    project: Project,
    stages: list[str],
    *,
    message: str | None = None,
    push: bool = False,
    force: bool = False,
    push_timeout: float | None = None,
) -> CommitReport:
    """Encrypt the stages' SST files into the repo and commit exactly those files."""
    from vault.worktree import check_can_commit

    report = CommitReport()
    key = project.keys.sealing
    with Change(project) as change:
        # Before anything is sealed: an unmerged vault file or a stale git lock would make
        # this commit drop a side or fail half-way.
        check_can_commit(project, stages, "commit")
        records = Records(project)
        for stage in stages:
            for kind in KINDS:
                try:
                    action = _seal_one(project, records, change, key, stage, kind, force)
                except OSError as exc:  # disk full, read-only: name the vault file
                    raise from_os_error(exc, project.repo.vault_file(kind, stage)) from None
                report.actions.append(action)
        if not any(a.action != "absent" for a in report.actions):
            names = ", ".join(stages)
            raise UsageError(
                f"no SST state for {names} in {project.home.root / 'state'}",
                "deploy or `sst secret set` first, or check --sst-home and the stage name",
            )
        # Unchanged vault files too (a commit killed before git left them uncommitted), and
        # sst-vault's own files even when no state changed (the vault's first commit).
        present = [
            project.repo.vault_file(a.kind, a.stage) for a in report.actions if a.action != "absent"
        ]
        report.commit = change.commit(_message(project, report, message), also=present, always=True)
        records.save()
        if push:
            if report.commit is None:  # what the push carries, for "nothing changed" to say
                store = change.store
                report.pushed_earlier = store.unpushed(
                    project.config.remote, store.current_branch()
                )
            from vault.gitstore import KeysChangedError

            try:
                change.push(push_timeout)
            except KeysChangedError as exc:
                again = " ".join(stages)
                exc.hint = f"{exc.hint} (`sst-vault commit {again} --push`: the SST home has it)"
                raise
            report.pushed = True
    return report


def _seal_one(
    project: Project,
    records: Records,
    change: Change,
    key: FileKey,
    stage: str,
    kind: str,
    force: bool,
) -> FileAction:
    home = HomeFile(project, stage, kind)
    handle = safefs.open_read(home.root, home.parts) if home.root.is_dir() else None
    if handle is None:
        return FileAction(stage, kind, "absent")
    with contextlib.ExitStack() as stack:
        stack.enter_context(handle)
        size = os.fstat(handle.fileno()).st_size
        # A large checkpoint's JSON check starts at once, in a child process (the other core),
        # and is proved to concern the bytes sealed by the SHA-256 taken in the first pass.
        child = (
            stack.enter_context(JsonCheckProcess(handle, home.path, FROM_HOME))
            if kind == "app" and size > OVERLAP_MIN and JsonCheckProcess.usable()
            else None
        )
        # Streamed, never held whole: a 100 MB state must fit commit's memory budget. The pass
        # that seals re-reads the file and is checked against this fingerprint (SST may write).
        mac = envelope.fingerprint_mac(key)
        digest = hashlib.sha256() if child else None
        size = 0
        for chunk in envelope.iter_file(handle):
            mac.update(chunk)
            if digest:
                digest.update(chunk)
            size += len(chunk)
        home_fp = mac.hexdigest()
        found = read_repo_header(project, stage, kind)
        header = None
        if found:
            header, repo_handle = found
            repo_handle.close()
        record = records.get(stage, kind)
        if (
            header
            and header.key_id == key.key_id
            and header.fingerprint == home_fp
            and repo_file_opens(project, key, stage, kind)
        ):
            records.confirm(stage, kind, header, "commit", force)
            return FileAction(stage, kind, "unchanged", header.serial)
        if header and not force and (record is None or header.serial > record.serial):
            if record is not None and home_changed(home, record, project):
                raise diverged(stage, kind, header.serial, record.serial)
            since = f"serial {record.serial}" if record else "never prepared here"
            raise RefusedError(
                f"{project.repo.vault_file(kind, stage)} is at serial {header.serial} but this "
                f"SST home is based on {since}: committing would overwrite a newer state",
                f"run `sst-vault prepare {stage}` (after `git pull`), redeploy, then commit; "
                "or pass --force to overwrite",
            )
        serial = max(header.serial if header else 0, record.serial if record else 0) + 1
        options = dict(
            key=key,
            serial=serial,
            level=COMMIT_COMPRESSION_LEVEL,
            fingerprint=home_fp,
            size=size,
        )
        if child and digest:
            # seal proves it sealed the bytes fingerprinted above, which `digest` names.
            sealed = change.seal(
                stage,
                kind,
                handle,
                before_pending=lambda: child.finish(digest.hexdigest()),
                workers=_workers_beside_child(),
                **options,
            )
        elif size <= OVERLAP_MIN:
            handle.seek(0)
            data = handle.read()
            validate_state(kind, data, home.path)
            # seal raises ChangedWhileReading unless what it read is what was fingerprinted.
            sealed = change.seal(stage, kind, io.BytesIO(data), **options)
        else:
            # JSON is checked in a thread on the very chunks that are sealed, while zlib and the
            # cipher (which release the GIL) run here; nothing is pending unless it passed.
            with Validation(kind, home.path, FROM_HOME) as validation:
                sealed = change.seal(
                    stage,
                    kind,
                    validation.tee(handle),
                    before_pending=validation.finish,
                    workers=min(os.cpu_count() or 1, 4),
                    **options,
                )
        records.set(stage, kind, sealed, "commit")
        return FileAction(stage, kind, "written", serial)


def _message(project: Project, report: CommitReport, message: str | None) -> str:
    by_stage: dict[str, list[str]] = {}
    for action in report.actions:
        if action.action == "written":
            by_stage.setdefault(action.stage, []).append(action.kind)
    summary = (
        "; ".join(f"{project.app}/{stage}: {', '.join(kinds)}" for stage, kinds in by_stage.items())
        or f"{project.app}: sst-vault files"
    )
    if message:
        return f"{message}\n\nsst-vault: {summary}"
    return f"sst-vault: state of {summary}"
