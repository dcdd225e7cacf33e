"""A stage's files on both sides (the SST home and the work tree) and the locks that guard them.

What status, prepare and commit share: the home's and the repository's file locks (each
finishes first what a killed process left), reading a vault file's clear header, a home file
fingerprinted lazily, and the one piece of advice for a diverged stage.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vault import envelope, safefs
from vault.envelope import FileKey, Header
from vault.errors import ConflictError, FileFormatError, RefusedError, UsageError, from_os_error
from vault.paths import HOME_JOURNAL_PARTS, REPO_JOURNAL_NAME, check_stage
from vault.project import Project
from vault.records import SyncRecord

CONFLICT_MARKER = b"<<<<<<< "


def home_journal(project: Project) -> safefs.Journal:
    """The journal of the SST home's multi-file changes (see safefs.Transaction)."""
    root = project.home.root
    return safefs.Journal(root, HOME_JOURNAL_PARTS, root)


@contextlib.contextmanager
def home_lock(project: Project) -> Iterator[None]:
    """Hold the SST home's file lock, after finishing whatever a killed process left there.

    A journal left by a kill is rolled forward first (so no stage is left mixed from two
    versions), then temporary files are removed (plaintext state, kept only by a kill).
    """
    try:
        project.home.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise from_os_error(exc, project.home.root) from None
    with safefs.exclusive(
        project.home.bookkeeping / "lock", f"the SST home {project.home.root}", project.home.root
    ):
        home_journal(project).recover()
        safefs.sweep_temp(project.home.root, project.home.temp_folders)
        yield


def repo_journal(project: Project, git_dir: Path) -> safefs.Journal:
    """The journal of a `change.Change`'s files, in the git directory (never in the work tree)."""
    return safefs.Journal(git_dir, (REPO_JOURNAL_NAME,), project.root)


@contextlib.contextmanager
def repo_lock(project: Project, git_dir: Path | None = None) -> Iterator[None]:
    """Hold the repository's file lock, after finishing whatever a killed process left there.

    A journal left by a kill half-way through a change's swap is rolled forward first (so no
    stage, and no data key, is left mixed from two versions), then temporary files are removed.
    A change killed after its swap but before git committed it is completed by the next
    `commit` (status shows `uncommitted`). Without `git_dir` the git directory is found without
    starting git (`prepare` takes this lock, and its start-up time is a goal).
    """
    if git_dir is None:
        git_dir = _git_dir(project)
    with safefs.exclusive(git_dir / "sst-vault.lock", "the repository"):
        repo_journal(project, git_dir).recover()
        safefs.sweep_temp(project.root, project.repo.temp_folders)
        yield


def _git_dir(project: Project) -> Path:
    from vault.worktree import git_dir_nearby

    found = git_dir_nearby(project.root)
    if found is None:
        from vault.gitstore import GitStore

        found = GitStore(project.root).git_dir
    return found


def recover(project: Project, git_dir: Path | None = None) -> bool:
    """Finish a killed prepare or change now, if one left a journal or temporary files.

    For read-only commands (`status`): the locks are taken only when there is work, so a
    clean home is never written to. True when the work tree may have changed (a journaled
    change of the repository was rolled forward): what git said about it is stale.
    """
    home = project.home
    if home.root.is_dir() and (
        home_journal(project).pending() or safefs.find_temp(home.root, home.temp_folders)
    ):
        with home_lock(project):
            pass
    if git_dir is None:
        return False
    journaled = bool(repo_journal(project, git_dir).pending())
    if journaled or safefs.find_temp(project.root, project.repo.temp_folders):
        with repo_lock(project, git_dir):
            pass
    return journaled


def resolve_stages(
    project: Project, stages: Iterable[str], all_: bool, *, source: str
) -> list[str]:
    """The stages a command acts on; `--all` means every stage found on `source`'s side."""
    stages = list(stages)
    if all_ and stages:
        raise UsageError("give stage names or --all, not both")
    if all_:
        found = project.repo.stages() if source == "repo" else project.home.stages(project.app)
        if not found:
            where = project.repo.state_root if source == "repo" else project.home.root
            raise UsageError(f"no stages found in {where}", "name the stage to use")
        return sorted(found)
    if not stages:
        raise UsageError("no stage given", "name one or more stages, or pass --all")
    return [check_stage(s) for s in dict.fromkeys(stages)]


def read_repo_header(project: Project, stage: str, kind: str) -> tuple[Header, BinaryIO] | None:
    handle = safefs.open_read(project.root, project.repo.vault_parts(kind, stage))
    if handle is None:
        return None
    path = project.repo.vault_file(kind, stage)
    if handle.read(len(CONFLICT_MARKER)) == CONFLICT_MARKER:
        handle.close()
        from vault.worktree import resolve_hint

        raise ConflictError(
            f"{path} holds git conflict markers (a text merge of an encrypted file)",
            resolve_hint(stage),
        )
    handle.seek(0)
    try:
        header, _ = envelope.read_header(handle, path)
        envelope.check_header(header, path, app=project.app, stage=stage, kind=kind)
    except BaseException:
        handle.close()
        raise
    handle.seek(0)
    return header, handle


class HomeFile:
    """One SST file in the home, fingerprinted lazily under whichever key a compare needs."""

    def __init__(self, project: Project, stage: str, kind: str) -> None:
        self.root = project.home.root
        self.parts = project.home.state_parts(kind, project.app, stage)
        self.path = project.home.state_file(kind, project.app, stage)
        self._fps: dict[str, str] = {}
        self._exists: bool | None = None

    @property
    def exists(self) -> bool:
        if self._exists is None:
            handle = safefs.open_read(self.root, self.parts) if self.root.is_dir() else None
            self._exists = handle is not None
            if handle:
                handle.close()
        return self._exists

    def fingerprint(self, key: FileKey | None) -> str | None:
        if key is None or not self.exists:
            return None
        if key.key_id not in self._fps:
            handle = safefs.open_read(self.root, self.parts)
            if handle is None:
                return None
            with handle:
                self._fps[key.key_id] = envelope.fingerprint(key, envelope.iter_file(handle))
        return self._fps[key.key_id]

    def read(self) -> bytes | None:
        return safefs.read_bytes(self.root, self.parts)


def home_changed(home: HomeFile, record: SyncRecord | None, project: Project) -> bool:
    """True when the home file differs from what was last synced (or was never synced)."""
    if not home.exists:
        return False
    if record is None:
        return True
    key = project.review_key(record.key_id)
    return key is None or home.fingerprint(key) != record.fingerprint


def repo_changed(header: Header, record: SyncRecord | None) -> bool:
    """True when the repo's vault file is not the version last synced into this home."""
    return record is None or (header.serial, header.fingerprint) != (
        record.serial,
        record.fingerprint,
    )


def diverged(stage: str, kind: str, repo_serial: int, synced_serial: int) -> RefusedError:
    """prepare and commit of a diverged stage give the same advice (they used to send the user
    from one to the other): keep what the repo has, since others deployed from it, and redeploy
    over it; a backup keeps the home's version for the rare case it was the right one."""
    return RefusedError(
        f"{stage} {kind} has diverged: the repo is at serial {repo_serial} and this SST home "
        f"changed since serial {synced_serial}, the last sync (someone else deployed {stage} too)",
        f"keep the repo's version: run `sst-vault prepare {stage} --force` (your home file is "
        "backed up), then deploy again",
    )


@dataclass
class FileAction:
    """What a command did to one file of a stage, for its report (and `--json`)."""

    stage: str
    kind: str
    action: str  # "written", "unchanged", "absent"
    serial: int | None = None
    backup: Path | None = None


def repo_file_opens(project: Project, key: FileKey, stage: str, kind: str) -> bool:
    """Whether the vault file's body (not just its clear header) is intact under `key`."""
    try:
        return verify_repo_file(project, key, stage, kind)
    except FileFormatError:
        return False  # a damaged body behind a matching header: commit writes a good file


def verify_repo_file(project: Project, key: FileKey, stage: str, kind: str) -> bool:
    """Decrypt the whole vault file to nowhere: False when absent, FileFormatError when bad."""
    handle = safefs.open_read(project.root, project.repo.vault_parts(kind, stage))
    if handle is None:
        return False
    path = project.repo.vault_file(kind, stage)
    with handle:
        envelope.open_(handle, Discard(), key, path, app=project.app, stage=stage, kind=kind)
    return True


class Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        return len(data)
