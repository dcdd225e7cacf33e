"""One change of the vault's files, committed as one commit: the HOW of every command that
writes the repository (commit, rollback, rotate, recipients add and remove, migrate, key upgrade;
`resolve` stages its change for the merge in progress instead of committing it).

An operation states only WHAT changes: the files it seals, the files of sst-vault's own it
writes, the plaintext it drops, and the message. `Change` does the rest, the same way for all:

    with Change(project) as change:                        # the locks; killed work finished
        change.seal(stage, kind, source, key=key, serial=n)  # sealed beside, read back, verified
        change.put(project.repo.record_parts, data)          # the data key, record, config…
        commit = change.commit("sst-vault: …")               # swapped in, committed; or None

Locks, always in this order, outermost first:
1. with --push (`pushed`), the deploy locks of the stages the change re-seals, taken before the
   pull: the change works on the remote's newest vault, and no `run` of those stages deploys
   between this pull and this push;
2. the SST home's file lock (`stagefiles.home_lock`): the sync records and this machine's trust
   memory live in the home, and a change updates them once its commit is made;
3. the repository's file lock (`stagefiles.repo_lock`): the vault files, the wrapped data key,
   the key record and git's index.
Why this order: a lock that may be waited on for minutes (the deploy lock, on the remote) is
never waited for while a local one is held, because a `run` on this machine that holds that
deploy lock takes the local locks in its own prepare and commit, and neither could go on. The
two local locks are taken home first by every command (`prepare` and `status`'s repair too), so
no two processes ever hold the one the other waits for.

What every operation gets alike:
- nothing is replaced before every new file was sealed, read back and authenticated to the bytes
  it was sealed from (`sealing.seal_to_repo`); leaving the block with an error discards them all;
- the files are replaced together and journaled in the git directory (`safefs.Transaction`): a
  kill -9 half-way is rolled forward by the next command that takes the repository's lock, so
  the work tree never holds a stage, or a data key and its files, from two versions;
- they stay revocable until git has them: when the commit fails (a hook, a full disk, a lock
  file, a signing program) the old files are put back and unstaged, so the work tree never holds
  a change that is neither committed nor refused (a kill -9 between the swap and the commit
  leaves the new files whole and uncommitted: `status` says so and the next commit takes them);
- exactly the paths the change wrote or dropped, and sst-vault's own files, are committed
  (`GitStore.commit_paths`), never `git add .`; the user's other staged work stays staged;
- no commit, and no rewritten file, when nothing changed: `commit` returns None.
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from vault import safefs
from vault.envelope import FileKey, Header
from vault.project import Project
from vault.records import writer_name
from vault.sealing import seal_to_repo
from vault.stagefiles import home_lock, repo_journal, repo_lock

if TYPE_CHECKING:
    from vault.gitstore import GitStore

T = TypeVar("T")


class Change:
    """Seal, swap in and commit a set of repository files as one change (see the module)."""

    def __init__(self, project: Project) -> None:
        from vault.gitstore import GitStore

        self.project = project
        self.store: GitStore = GitStore(project.root)
        self.writer = writer_name()
        self._written: list[Path] = []
        self._dropped: list[Path] = []
        self._txn: safefs.Transaction | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Change:
        with contextlib.ExitStack() as stack:
            stack.enter_context(home_lock(self.project))
            stack.enter_context(repo_lock(self.project, self.store.git_dir))
            journal = repo_journal(self.project, self.store.git_dir)
            self._txn = stack.enter_context(safefs.Transaction(journal))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stack.__exit__(*exc_info)

    @property
    def txn(self) -> safefs.Transaction:
        assert self._txn is not None, "use Change as a context manager"
        return self._txn

    @property
    def changed(self) -> bool:
        """Whether the change has anything to swap in or drop yet."""
        return bool(self._written or self._dropped)

    def seal(
        self,
        stage: str,
        kind: str,
        source: BinaryIO,
        *,
        key: FileKey,
        serial: int,
        **options: Any,
    ) -> Header:
        """Seal `source` as the stage's vault file (verified, not yet in place); its header."""
        sealed, pending = seal_to_repo(
            self.project,
            key,
            stage,
            kind,
            source,
            serial=serial,
            writer=self.writer,
            store_ahead=self.store.store_ahead,
            **options,
        )
        self.txn.add(pending)
        self._written.append(self.project.repo.vault_file(kind, stage))
        return sealed

    def put(self, parts: tuple[str, ...], data: bytes) -> None:
        """Write one of sst-vault's own files (parts below the project folder), not yet in place."""
        with safefs.AtomicWriter(self.project.root, parts, 0o644) as out:
            out.write(data)
            self.txn.add(out.finish())
        self._written.append(self.project.root.joinpath(*parts))

    def drop(self, path: Path) -> None:
        """Remove `path` from the work tree and the index with this change (migrate's plaintext,
        the side `resolve` did not keep). It stays where it is until the swap; a failed commit
        puts it back. A path that is already gone is dropped from the index alone.
        """
        self._dropped.append(path)

    def commit(
        self, message: str, *, also: Iterable[Path] = (), own: bool = True, always: bool = False
    ) -> str | None:
        """Swap every new file in together, then commit exactly the paths written and dropped,
        `also`, and (`own`) sst-vault's own files; the commit id, or None when nothing changed.

        `always`: commit `also` and the own files even when this change wrote nothing (the
        `commit` command takes sst-vault's own files alone: the vault's first commit).
        """
        if not self.changed and not always:
            return None
        paths = [*self._written, *self._dropped, *also]

        def record() -> str | None:
            if own:  # after the swap: a change may write the data key or record for the first time
                paths.extend(own_files(self.project, self.store))
            return self.store.commit_paths(paths, message)

        return self._swap_then(paths, record, unstage=True)

    def stage(self) -> list[str]:
        """Swap every new file in together and stage the paths written and dropped, uncommitted.

        `resolve`'s way: a merge, rebase or cherry-pick in progress is concluded by the user's own
        `git commit` or `--continue`. One `git add` writes the index once, so a failure leaves
        the index as it was (its conflict entries included) and the old files are put back.
        Returns the repo-relative paths staged.
        """
        paths = [*self._written, *self._dropped]
        return self._swap_then(paths, lambda: self.store.stage_paths(paths), unstage=False)

    def _swap_then(self, paths: list[Path], record: Callable[[], T], *, unstage: bool) -> T:
        """Swap in, drop, then `record` the change in git; on any failure put everything back.

        `unstage`: also unstage `paths` on failure (what a failed `git add` + `git commit` may
        have staged); never while git's index holds a conflict that `git reset` would discard.
        """
        txn = self.txn
        txn.commit(keep=True)
        safefs.pause_point("commit-git")
        removed: list[tuple[Path, bytes, int]] = []
        try:
            for path in self._dropped:
                if not path.exists():
                    continue
                # Held in memory (migrate read each one whole to seal it) until git has the change.
                removed.append((path, path.read_bytes(), stat.S_IMODE(path.stat().st_mode)))
                path.unlink()
            result = record()
        except BaseException:
            # What `git add` staged goes too, own files included (best effort: the index may be
            # locked; a path the user had staged before is unstaged, its file left as it is).
            touched = sorted({self.store.relative(p) for p in paths})
            if unstage and touched:
                self.store.git("reset", "-q", "--", *touched, check=False)
            for path, data, mode in removed:
                with contextlib.suppress(OSError):
                    safefs.write_atomic(path.parent, (path.name,), data, mode)
            raise  # leaving the block puts the old files back (Transaction.undo)
        txn.release()  # git has them: an error after this point must not undo the files
        self._written.clear()
        self._dropped.clear()
        return result

    def push(self, timeout: float | None = None) -> None:
        """Push the current branch (rebasing over others' pushes), still under the locks; never
        onto a change of the vault's keys (`key_paths`)."""
        self.store.push(
            self.project.config.remote,
            timeout=timeout,
            keys=key_paths(self.project, self.store),
            retired=data_key_retired(self.project, self.store),
        )


def key_paths(project: Project, store: GitStore) -> list[str]:
    """The key record and the wrapped data key, repo-relative (age; Fernet keeps neither).

    A push of sealed state must not land after a change to them that retired the data key
    (`data_key_retired`): it was sealed under the data key before, which a removed member
    still holds (`GitStore.push`'s `keys`).
    """
    if project.config.backend != "age":
        return []
    return [store.relative(p) for p in (project.repo.data_key_file, project.repo.record_file)]


def data_key_retired(project: Project, store: GitStore) -> Callable[[str, str], bool]:
    """Whether the key record's newest data key differs between two commits.

    A recipient added (the same data key, wrapped to one more) retires nothing: local commits
    sealed under that data key may be rebased onto it. A record that is missing or does not
    parse at either commit counts as a change (refused, never rebased). Nothing here is
    trusted: it only decides between rebasing and refusing.
    """
    from vault.errors import TrustError
    from vault.gitstore import show_blob
    from vault.keyrecord import parse

    record = store.relative(project.repo.record_file)

    def retired(base: str, remote_sha: str) -> bool:
        newest = []
        for rev in (base, remote_sha):
            blob = show_blob(store.top, rev, record)
            try:
                newest.append(parse(blob, "history")[-1].key_id if blob else None)
            except (TrustError, IndexError):
                return True
        return newest[0] is None or newest[0] != newest[1]

    return retired


def own_files(project: Project, store: GitStore | None = None) -> list[Path]:
    """sst-vault's own files that a change commits besides vault files.

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


def pushed(
    project: Project,
    stages: Iterable[str] | None,
    operation: Callable[[Project], T],
    *,
    command: str,
    lock_timeout: float = 0,
    lock_ttl: int | None = None,
    info: Callable[[str], None] = lambda _msg: None,
) -> T:
    """`operation` (a `Change`) between a pull and a push, under the stages' deploy locks.

    What `rollback --push`, `rotate --push` and `recipients remove --push` do, so that they
    never race a `run` of the stages they re-seal. `stages` None: every stage in the repo as
    the remote has it. `operation` gets the project as the pull left it (recipients or keys
    someone else pushed meanwhile must not be lost). The deploy locks come first, before the
    local locks `Change` takes (see the module's locking order).
    """
    from vault import trust
    from vault.gitstore import DivergedError, GitStore
    from vault.lock import DEFAULT_TTL, holding

    project.keys  # noqa: B018 - a missing or wrong key must stop us before any lock is taken
    store = GitStore(project.root)
    remote = project.config.remote
    store.require_remote(remote)
    branch = store.current_branch()
    every_stage = stages is None
    if stages is None:
        store.pull(remote)
        stages = Project.open(project.root, project.home.root).repo.stages()
    # `stages` None: the operation re-seals every stage (rotate, recipients remove). A stage
    # that reaches the remote meanwhile (a first deploy: no lock of ours covers it) is still
    # under the data key before, where a removed member reads it and no prepare opens it: no
    # change in the state folder is rebased onto. The operation is done again instead, from
    # what the remote has, after dropping its commit and what this machine remembered of it.
    whole = [store.relative(project.repo.state_root)] if every_stage else []
    ttl = DEFAULT_TTL if lock_ttl is None else lock_ttl
    with holding(project, stages, store, timeout=lock_timeout, ttl=ttl, command=command, info=info):
        for attempt in range(REDO_ALL + 1):
            store.pull(remote)
            remembered = trust.memory_bytes(project.home, project.app)
            result = operation(Project.open(project.root, project.home.root))
            if not store.unpushed(remote, branch):
                return result
            try:
                store.push(remote, whole=whole)
                return result
            except DivergedError:
                if not every_stage or attempt == REDO_ALL or store.unpushed(remote, branch) != 1:
                    raise
            info(
                f"{remote}/{branch} changed the state folder meanwhile (a stage deployed for the"
                f" first time?): doing `{command}` again from what it has now"
            )
            store.git("reset", "--quiet", "--keep", "HEAD~1")  # the operation's commit
            trust.restore_memory(project.home, project.app, remembered)
    raise AssertionError("unreachable")


# How often `pushed` does a whole-vault operation again when the state folder keeps changing.
REDO_ALL = 3


__all__ = ["Change", "data_key_retired", "key_paths", "own_files", "pushed"]
