"""`commit`: seal a stage's SST home files into the work tree and commit exactly those files.

Holds the home's and the repository's locks; refuses to overwrite a newer vault file (or a
diverged stage) without --force; the new vault files stay revocable until git has them.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vault import envelope, safefs
from vault.envelope import FileKey
from vault.errors import RefusedError, UsageError, from_os_error
from vault.paths import KINDS
from vault.project import Project
from vault.records import Records, writer_name
from vault.sealing import (
    COMMIT_COMPRESSION_LEVEL,
    FROM_HOME,
    OVERLAP_MIN,
    Validation,
    seal_to_repo,
    validate_state,
)
from vault.stagefiles import (
    FileAction,
    HomeFile,
    diverged,
    home_changed,
    home_lock,
    read_repo_header,
    repo_file_opens,
    repo_lock,
)

if TYPE_CHECKING:
    from vault.gitstore import GitStore


@dataclass
class CommitReport:
    actions: list[FileAction] = field(default_factory=list)
    commit: str | None = None
    pushed: bool = False
    pushed_earlier: int = 0  # with nothing to commit: earlier local commits the push carried

    @property
    def written(self) -> list[FileAction]:
        return [a for a in self.actions if a.action == "written"]


def own_files(project: Project, store: GitStore | None = None) -> list[Path]:
    """sst-vault's own files that commit may stage besides vault files.

    `.gitattributes` and `.gitignore` are shared with the user: they are taken only while the
    work tree has the entries `init` wrote and HEAD does not yet (the vault's first commit), so
    the user's own uncommitted lines there are never swept into later state commits.
    """
    from vault.gitsetup import gitattributes_block, gitignore_block
    from vault.gitstore import GitStore

    files = [project.repo.config_file]
    if project.config.backend == "age":
        files += [project.repo.data_key_file, project.repo.record_file]
    state_dir = project.config.state_dir
    for name, block in (
        (".gitattributes", gitattributes_block(state_dir)),
        (".gitignore", gitignore_block(state_dir)),
    ):
        path = project.root / name
        if not path.is_file() or block.encode() not in path.read_bytes():
            continue
        store = store or GitStore(project.root)
        if block.encode() not in (store.show("HEAD", path) or b""):
            files.append(path)
    return [f for f in files if f.is_file()]


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
    from vault.gitstore import GitStore
    from vault.worktree import check_can_commit

    store = GitStore(project.root)
    report = CommitReport()
    key = project.keys.sealing
    writer = writer_name()
    with home_lock(project), repo_lock(project, store.git_dir):
        # Before anything is sealed: an unmerged vault file or a stale git lock would make
        # this commit drop a side or fail half-way.
        check_can_commit(project, stages, "commit")
        records = Records(project)
        with safefs.Transaction() as txn:
            for stage in stages:
                for kind in KINDS:
                    try:
                        action = _seal_one(project, records, txn, key, stage, kind, writer, force)
                    except OSError as exc:  # disk full, read-only: name the vault file
                        raise from_os_error(exc, project.repo.vault_file(kind, stage)) from None
                    report.actions.append(action)
            if not any(a.action != "absent" for a in report.actions):
                names = ", ".join(stages)
                raise UsageError(
                    f"no SST state for {names} in {project.home.root / 'state'}",
                    "deploy or `sst secret set` first, or check --sst-home and the stage name",
                )
            # The new vault files stay revocable until git has them: a failed git commit (disk
            # full, a lock file) puts the old ones back, so the work tree never holds state
            # that is neither committed nor refused.
            txn.commit(keep=True)
            safefs.pause_point("commit-git")
            paths = [
                project.repo.vault_file(a.kind, a.stage)
                for a in report.actions
                if a.action != "absent"
            ]
            try:
                report.commit = store.commit_paths(
                    paths + own_files(project, store), _message(project, report, message)
                )
            except BaseException:
                written = [
                    store.relative(project.repo.vault_file(a.kind, a.stage)) for a in report.written
                ]
                if written:  # what `git add` staged goes too (best effort: the index may be locked)
                    store.git("reset", "-q", "--", *written, check=False)
                raise
        records.save()
        if push:
            if report.commit is None:  # what the push carries, for "nothing changed" to say
                report.pushed_earlier = store.unpushed(
                    project.config.remote, store.current_branch()
                )
            store.push(project.config.remote, timeout=push_timeout)
            report.pushed = True
    return report


def _seal_one(
    project: Project,
    records: Records,
    txn: safefs.Transaction,
    key: FileKey,
    stage: str,
    kind: str,
    writer: str,
    force: bool,
) -> FileAction:
    home = HomeFile(project, stage, kind)
    handle = safefs.open_read(home.root, home.parts) if home.root.is_dir() else None
    if handle is None:
        return FileAction(stage, kind, "absent")
    with handle:
        # Streamed, never held whole: a 100 MB state must fit commit's memory budget. The pass
        # that seals re-reads the file and is checked against this fingerprint (SST may write).
        mac = envelope.fingerprint_mac(key)
        size = 0
        for chunk in envelope.iter_file(handle):
            mac.update(chunk)
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
            records.set(stage, kind, header, "commit")
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
            serial=serial,
            writer=writer,
            level=COMMIT_COMPRESSION_LEVEL,
            fingerprint=home_fp,
            size=size,
        )
        if size <= OVERLAP_MIN:
            handle.seek(0)
            data = handle.read()
            validate_state(kind, data, home.path)
            # seal raises ChangedWhileReading unless what it read is what was fingerprinted.
            sealed, pending = seal_to_repo(project, key, stage, kind, io.BytesIO(data), **options)
        else:
            # JSON is checked in a thread on the very chunks that are sealed, while zlib and the
            # cipher (which release the GIL) run here; nothing is pending unless it passed.
            with Validation(kind, home.path, FROM_HOME) as validation:
                sealed, pending = seal_to_repo(
                    project,
                    key,
                    stage,
                    kind,
                    validation.tee(handle),
                    before_verify=validation.finish,
                    workers=min(os.cpu_count() or 1, 4),
                    **options,
                )
        txn.add(pending)
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
