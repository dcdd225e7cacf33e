"""prepare, commit and status: moving SST state between the SST home and the repo.

A sync record per SST home remembers, for each app, stage and kind, the serial and keyed
fingerprint last prepared or committed there. With it `status` is a three-way compare, and
`prepare` can tell a home change that was never committed (refused without --force) from a
home that is merely behind. Each command holds a file lock on the SST home (and `commit` one
on the repository) so two processes never interleave.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from vault import envelope, safefs
from vault.envelope import FileKey, Header
from vault.errors import (
    ConflictError,
    FileFormatError,
    InvalidStateError,
    RefusedError,
    UsageError,
    WrongKeyError,
    from_os_error,
)
from vault.paths import FALLBACK_STAGE, HOME_JOURNAL_PARTS, KINDS, check_stage
from vault.project import Project

if TYPE_CHECKING:
    from vault.gitstore import GitStore

RECORDS_VERSION = 1
CONFLICT_MARKER = b"<<<<<<< "

IN_SYNC = "in sync"
HOME_AHEAD = "home ahead"
REPO_AHEAD = "repo ahead"
DIVERGED = "diverged"
MISSING = "missing"
DAMAGED = "damaged"  # only `status --verify` opens bodies, so only it can say this
REPO_BEHIND = "repo behind"  # same content, but a lower serial than last synced here
CONFLICT = "conflict"  # the vault file is unmerged in git (or holds conflict markers)
UNCOMMITTED = "uncommitted"  # sealed in the work tree, in sync with the home, not in git yet


# --- sync records -------------------------------------------------------------------------


@dataclass
class SyncRecord:
    serial: int
    fingerprint: str
    key_id: str
    action: str  # "prepare" or "commit"
    time: str


class Records:
    """The sync records of one app in one SST home: <home>/.sst-vault/sync/<app>.json."""

    def __init__(self, project: Project) -> None:
        self.root = project.home.root
        self.parts = (".sst-vault", "sync", f"{project.app}.json")
        raw = safefs.read_bytes(self.root, self.parts) if self.root.is_dir() else None
        self.data: dict[str, dict[str, dict]] = {}
        if raw:
            try:
                loaded = json.loads(raw)
                if loaded.get("version") == RECORDS_VERSION:
                    self.data = loaded.get("stages", {})
            except (ValueError, AttributeError):
                self.data = {}  # a broken record only costs the three-way compare

    def get(self, stage: str, kind: str) -> SyncRecord | None:
        entry = self.data.get(stage, {}).get(kind)
        try:
            return SyncRecord(**entry) if entry else None
        except TypeError:
            return None

    def set(self, stage: str, kind: str, header: Header, action: str) -> None:
        record = SyncRecord(header.serial, header.fingerprint, header.key_id, action, _now())
        self.data.setdefault(stage, {})[kind] = asdict(record)

    def stages(self) -> set[str]:
        return set(self.data)

    def _body(self) -> bytes:
        return json.dumps({"version": RECORDS_VERSION, "stages": self.data}, indent=1).encode()

    def save(self) -> None:
        safefs.write_atomic(self.root, self.parts, self._body())

    def pending(self) -> safefs.PendingFile:
        """The records, written and waiting to be replaced with the files they describe."""
        with safefs.AtomicWriter(self.root, self.parts) as out:
            out.write(self._body())
            return out.finish()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def writer_name() -> str:
    import getpass  # with socket, only where a file is written: they cost start-up time
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# --- shared helpers -----------------------------------------------------------------------


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


@contextlib.contextmanager
def repo_lock(project: Project, git_dir: Path) -> Iterator[None]:
    """Hold the repository's file lock, after removing temporary files a kill left there.

    Vault files need no journal: each is replaced whole, git holds the previous versions, and
    a commit killed half-way is completed by the next `commit` (status shows `uncommitted`).
    """
    with safefs.exclusive(git_dir / "sst-vault.lock", "the repository"):
        safefs.sweep_temp(project.root, project.repo.temp_folders)
        yield


def recover(project: Project, git_dir: Path | None = None) -> None:
    """Finish a killed prepare or commit now, if one left a journal or temporary files.

    For read-only commands (`status`): the locks are taken only when there is work, so a
    clean home is never written to.
    """
    home = project.home
    if home.root.is_dir() and (
        home_journal(project).pending() or safefs.find_temp(home.root, home.temp_folders)
    ):
        with home_lock(project):
            pass
    if git_dir is not None and safefs.find_temp(project.root, project.repo.temp_folders):
        with repo_lock(project, git_dir):
            pass


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


def _read_repo_header(project: Project, stage: str, kind: str) -> tuple[Header, BinaryIO] | None:
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


class _HomeFile:
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


def _home_changed(home: _HomeFile, record: SyncRecord | None, project: Project) -> bool:
    """True when the home file differs from what was last synced (or was never synced)."""
    if not home.exists:
        return False
    if record is None:
        return True
    key = project.review_key(record.key_id)
    return key is None or home.fingerprint(key) != record.fingerprint


def _repo_changed(header: Header, record: SyncRecord | None) -> bool:
    """True when the repo's vault file is not the version last synced into this home."""
    return record is None or (header.serial, header.fingerprint) != (
        record.serial,
        record.fingerprint,
    )


def _diverged(stage: str, kind: str, repo_serial: int, synced_serial: int) -> RefusedError:
    """prepare and commit of a diverged stage give the same advice (they used to send the user
    from one to the other): keep what the repo has, since others deployed from it, and redeploy
    over it; a backup keeps the home's version for the rare case it was the right one."""
    return RefusedError(
        f"{stage} {kind} has diverged: the repo is at serial {repo_serial} and this SST home "
        f"changed since serial {synced_serial}, the last sync (someone else deployed {stage} too)",
        f"keep the repo's version: run `sst-vault prepare {stage} --force` (your home file is "
        "backed up), then deploy again",
    )


# --- status -------------------------------------------------------------------------------


@dataclass
class KindStatus:
    stage: str
    kind: str
    state: str
    repo_serial: int | None = None
    synced_serial: int | None = None
    home_present: bool = False
    repo_writer: str | None = None
    repo_time: str | None = None
    problem: str | None = None  # why a damaged vault file does not open


def status(
    project: Project, stages: Iterable[str] = (), *, verify: bool = False
) -> list[KindStatus]:
    """The three-way state of each stage and kind, from clear headers, fingerprints and git.

    Without `verify` this reads, per kind: the vault file's clear header (serial, fingerprint,
    key id: not authenticated until the body is), the SST home file (its keyed fingerprint),
    the sync record (serial and fingerprint last synced here) and git's index (unmerged or
    uncommitted vault files). A header whose serial disagrees with the record is never
    `in sync`; a body damaged behind an intact header is found only by `verify`, which
    decrypts every vault file.
    """
    from vault.worktree import CONFLICT as TREE_CONFLICT
    from vault.worktree import tree_state

    stages = [check_stage(s) for s in stages]
    tree = tree_state(project)
    recover(project, tree.git_dir)
    records = Records(project)
    if not stages:
        stages = sorted(
            project.repo.stages()
            | project.home.stages(project.app)
            | records.stages()
            | {stage for stage, _kind in tree.files}
        )
    if verify:
        # Unlock first: a key that is not a recipient (or a pin that fails) is that, with the
        # message prepare gives, not every vault file reported as damaged.
        project.keys  # noqa: B018
    rows: list[KindStatus] = []
    for stage in stages:
        stage_rows = []
        for kind in KINDS:
            git_state = tree.files.get((stage, kind))
            row = _kind_status(project, records, stage, kind, verify, git_state)
            if row is None:
                continue
            if git_state == TREE_CONFLICT:
                row.state = CONFLICT
            elif git_state is not None and row.state == IN_SYNC:
                # Sealed from this very home, but git does not have it: a commit that failed
                # or was killed after sealing. Never "in sync": the next clone would not see it.
                row.state = UNCOMMITTED
            stage_rows.append(row)
        rows += stage_rows or [KindStatus(stage, "-", MISSING)]
    return rows


def _kind_status(
    project: Project,
    records: Records,
    stage: str,
    kind: str,
    verify: bool,
    git_state: str | None,
) -> KindStatus | None:
    """One row; `git_state` is what git's index says of the vault file (worktree.tree_state)."""
    from vault.worktree import CONFLICT as TREE_CONFLICT
    from vault.worktree import UNCOMMITTED as TREE_UNCOMMITTED

    conflict = git_state == TREE_CONFLICT
    home = _HomeFile(project, stage, kind)
    record = records.get(stage, kind)
    row = KindStatus(stage, kind, MISSING, home_present=home.exists)
    row.synced_serial = record.serial if record else None
    header = None
    try:
        found = _read_repo_header(project, stage, kind)
        if found:
            header, handle = found
            handle.close()
            row.repo_serial, row.repo_writer = header.serial, header.writer
            row.repo_time = header.time
            if verify:
                key = project.keys.for_id(header.key_id) or project.keys.sealing
                _verify_repo_file(project, key, stage, kind)
    except ConflictError as exc:
        row.state, row.problem = CONFLICT, exc.message
        return row
    except FileFormatError as exc:
        if conflict:
            return row  # git's side of the merge left in the file: the caller says conflict
        if not verify:
            raise
        row.state, row.problem = DAMAGED, f"{exc.reason}: {exc.detail}"
        return row
    if header is None and not home.exists:
        return row if conflict else None
    if header is None:
        row.state = HOME_AHEAD
    elif not home.exists:
        row.state = REPO_AHEAD
    elif home.fingerprint(project.keys.for_id(header.key_id)) == header.fingerprint:
        # Same content; the serial must agree with the last sync too, or the header says
        # something this home never saw (a newer re-seal, an older checkout, an edit).
        # A commit killed between sealing and saving its records leaves this home's own
        # header, uncommitted: the caller reports that as UNCOMMITTED.
        sealed_here = git_state == TREE_UNCOMMITTED and header.writer == writer_name()
        if record is None or record.serial == header.serial or sealed_here:
            row.state = IN_SYNC
        elif header.serial > record.serial:
            row.state = REPO_AHEAD
        else:
            row.state = REPO_BEHIND
    else:
        home_changed = _home_changed(home, record, project)
        repo_changed = record is None or (header.serial, header.fingerprint) != (
            record.serial,
            record.fingerprint,
        )
        if home_changed and repo_changed:
            row.state = DIVERGED
        elif home_changed:
            row.state = HOME_AHEAD
        elif record is not None and header.serial < record.serial:
            row.state = REPO_BEHIND
        else:
            row.state = REPO_AHEAD
    return row


# --- prepare ------------------------------------------------------------------------------


@dataclass
class FileAction:
    stage: str
    kind: str
    action: str  # "written", "unchanged", "absent"
    serial: int | None = None
    backup: Path | None = None


@dataclass
class PrepareReport:
    actions: list[FileAction] = field(default_factory=list)

    @property
    def written(self) -> list[FileAction]:
        return [a for a in self.actions if a.action == "written"]


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
    with home_lock(project), safefs.Transaction(home_journal(project)) as txn:
        records = Records(project)
        plan: list[tuple[str, str, Header, BinaryIO, FileKey]] = []
        backups: list[tuple[_HomeFile, str]] = []
        try:
            for stage in stages:
                found_any = False
                for kind in KINDS:
                    found = _read_repo_header(project, stage, kind)
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
                home = _HomeFile(project, stage, kind)
                if home.fingerprint(key) == header.fingerprint:
                    # The header is not authenticated until the body is: a tampered file
                    # whose header still matches the home must fail, not pass as unchanged.
                    envelope.open_(
                        handle,
                        _Discard(),
                        key,
                        project.repo.vault_file(kind, stage),
                        app=project.app,
                        stage=stage,
                        kind=kind,
                    )
                    records.set(stage, kind, header, "prepare")
                    report.actions.append(FileAction(stage, kind, "unchanged", header.serial))
                    continue
                record = records.get(stage, kind)
                if record and header.serial < record.serial and not force:
                    raise RefusedError(
                        f"{project.repo.vault_file(kind, stage)} has serial {header.serial}, older "
                        f"than serial {record.serial} last synced into this SST home",
                        "pull the latest commit, or pass --force to go back to it",
                    )
                if _home_changed(home, record, project):
                    if not force and record is not None and _repo_changed(header, record):
                        raise _diverged(stage, kind, header.serial, record.serial)
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
                        assert out.file is not None
                        envelope.open_(
                            handle, out.file, key, path, app=project.app, stage=stage, kind=kind
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


def _backup(project: Project, home: _HomeFile, stage: str) -> Path:
    """Keep the home file that --force is about to overwrite, next to the sync records."""
    data = home.read() or b""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{time.monotonic_ns() % 10**6:06d}"
    parts = (".sst-vault", "backup", project.app, stage, f"{home.parts[1]}-{stamp}.json")
    safefs.write_atomic(project.home.root, parts, data)
    return project.home.root.joinpath(*parts)


# --- commit -------------------------------------------------------------------------------


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
    home = _HomeFile(project, stage, kind)
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
        found = _read_repo_header(project, stage, kind)
        header = None
        if found:
            header, repo_handle = found
            repo_handle.close()
        record = records.get(stage, kind)
        if (
            header
            and header.key_id == key.key_id
            and header.fingerprint == home_fp
            and _repo_file_opens(project, key, stage, kind)
        ):
            records.set(stage, kind, header, "commit")
            return FileAction(stage, kind, "unchanged", header.serial)
        if header and not force and (record is None or header.serial > record.serial):
            if record is not None and _home_changed(home, record, project):
                raise _diverged(stage, kind, header.serial, record.serial)
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
        if size <= _OVERLAP_MIN:
            handle.seek(0)
            data = handle.read()
            _validate(kind, data, home.path)
            # seal raises ChangedWhileReading unless what it read is what was fingerprinted.
            sealed, pending = seal_to_repo(project, key, stage, kind, io.BytesIO(data), **options)
        else:
            # JSON is checked in a thread on the very chunks that are sealed, while zlib and the
            # cipher (which release the GIL) run here; nothing is pending unless it passed.
            with _Validation(kind, home.path) as validation:
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


def seal_to_repo(
    project: Project,
    key: FileKey,
    stage: str,
    kind: str,
    source: BinaryIO,
    *,
    serial: int,
    writer: str,
    before_verify: Callable[[], None] | None = None,
    **seal_options: Any,
) -> tuple[Header, safefs.PendingFile]:
    """Seal `source` beside the stage's vault file and check that it opens; caller replaces.

    The one way commit, migrate, rollback and rotate write a vault file: nothing is pending
    until the sealed bytes were read back, authenticated and matched to what was sealed. It
    writes the newest format, chunked unless `sst-vault.toml` says `chunking = false`.
    """
    path = project.repo.vault_file(kind, stage)
    meta = {"app": project.app, "stage": stage, "kind": kind}
    with safefs.AtomicWriter(project.root, project.repo.vault_parts(kind, stage), 0o644) as out:
        assert out.file is not None
        sealed = envelope.seal(
            source,
            out.file,
            key,
            serial=serial,
            writer=writer,
            chunking=project.config.chunking,
            **meta,
            **seal_options,
        )
        if before_verify is not None:
            before_verify()
        opened = envelope.open_(out.read_back(), _Discard(), key, path, **meta)
        if opened.fingerprint != sealed.fingerprint:
            raise RefusedError(
                f"{path}: the sealed file does not round-trip",
                "nothing was replaced; report this bug",
            )
        return sealed, out.finish()


def _repo_file_opens(project: Project, key: FileKey, stage: str, kind: str) -> bool:
    """Whether the vault file's body (not just its clear header) is intact under `key`."""
    try:
        return _verify_repo_file(project, key, stage, kind)
    except FileFormatError:
        return False  # a damaged body behind a matching header: commit writes a good file


def _verify_repo_file(project: Project, key: FileKey, stage: str, kind: str) -> bool:
    """Decrypt the whole vault file to nowhere: False when absent, FileFormatError when bad."""
    handle = safefs.open_read(project.root, project.repo.vault_parts(kind, stage))
    if handle is None:
        return False
    path = project.repo.vault_file(kind, stage)
    with handle:
        envelope.open_(handle, _Discard(), key, path, app=project.app, stage=stage, kind=kind)
    return True


# zlib level for commit: DESIGN wants repo growth <= 0.25 x plaintext; on Pulumi JSON level 3
# gives ~0.18 (level 6: ~0.17) in about 60% of level 6's time. Readers do not care. Above 1 MiB
# with ISA-L installed, the envelope uses ISA-L's level 2 instead (~0.195, 5x faster).
COMMIT_COMPRESSION_LEVEL = 3
_OVERLAP_MIN = 4 * 1024 * 1024  # below this, a validation thread costs more than it saves


class _Validation:
    """Validate, in a worker thread, exactly the chunks that `seal` reads from a file."""

    def __init__(self, kind: str, path: Path) -> None:
        import queue
        import threading

        self.kind = kind
        self.path = path
        self.chunks: queue.Queue[bytes | None] = queue.Queue(8)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="sst-vault-validate", daemon=True)

    def _run(self) -> None:
        ended = False

        def chunks() -> Iterator[bytes]:
            nonlocal ended
            while (chunk := self.chunks.get()) is not None:
                yield chunk
            ended = True

        try:
            _validate_chunks(self.kind, chunks(), self.path)
        except BaseException as exc:  # raised in the committing thread
            self.error = exc
        finally:
            # Keep taking chunks until the end so the sealing thread never blocks on a full queue.
            while not ended and self.chunks.get() is not None:
                pass

    def tee(self, handle: BinaryIO) -> BinaryIO:
        validation = self

        class Tee(io.RawIOBase):
            def seekable(self) -> bool:
                return True

            def seek(self, pos: int, whence: int = 0) -> int:
                return handle.seek(pos, whence)

            def read(self, size: int = -1) -> bytes:
                data = handle.read(size)
                if data:
                    validation.chunks.put(data)
                return data

        return Tee()  # type: ignore[return-value]

    def __enter__(self) -> _Validation:
        import sys

        self.switch = sys.getswitchinterval()
        # The validating thread holds the GIL between C scanner calls; a short switch
        # interval lets the sealing thread get it back quickly after each zlib call.
        sys.setswitchinterval(min(self.switch, 0.0005))
        self.thread.start()
        return self

    def finish(self) -> None:
        """Wait for the validating thread; raise what it found (before anything is pending)."""
        import sys

        if self.thread.is_alive():
            self.chunks.put(None)
            self.thread.join()
        sys.setswitchinterval(self.switch)
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.finish()
        else:
            with contextlib.suppress(BaseException):
                self.finish()  # another error is already on its way


def _validate_chunks(kind: str, chunks: Iterator[bytes], path: Path) -> None:
    if kind != "app":
        _validate(kind, b"".join(chunks), path)
        return
    from vault import jsoncheck

    try:
        jsoncheck.check(chunks)
    except (ValueError, RecursionError) as exc:
        raise _invalid_json(path, exc) from None


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        return len(data)


def _validate(kind: str, data: bytes, path: Path) -> None:
    """Refuse what SST itself would refuse, so a corrupt state never reaches the repo."""
    if kind == "app":
        try:
            # Discarding each object as it is parsed keeps memory near the input's size.
            json.loads(data, object_pairs_hook=lambda _pairs: None)
        except (ValueError, RecursionError) as exc:
            raise _invalid_json(path, exc) from None
    elif kind == "passphrase" and not data.strip():
        # Opaque to us: usually base64 of 32 bytes, but SST stores $SST_PASSPHRASE verbatim.
        raise InvalidStateError(
            f"{path} is an empty SST passphrase", "restore it with `sst-vault prepare --force`"
        )
    elif kind == "secret" and len(data) < 12 + 16:
        raise InvalidStateError(
            f"{path} is too short to be an SST secret file",
            "re-set the secret with `sst secret set`",
        )


def _invalid_json(path: Path, exc: BaseException) -> InvalidStateError:
    return InvalidStateError(
        f"{path} is not valid JSON ({exc})",
        "SST would refuse it too; redeploy or restore it with `sst-vault prepare --force`",
    )


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


__all__ = [
    "CONFLICT",
    "DIVERGED",
    "FALLBACK_STAGE",
    "HOME_AHEAD",
    "IN_SYNC",
    "MISSING",
    "REPO_AHEAD",
    "REPO_BEHIND",
    "UNCOMMITTED",
    "CommitReport",
    "FileAction",
    "KindStatus",
    "PrepareReport",
    "Records",
    "commit",
    "prepare",
    "resolve_stages",
    "status",
]
