"""File system access that never follows a planted symlink and never leaves half a file.

Every directory below a trusted root is opened with O_NOFOLLOW and every file is read or
written relative to that directory's descriptor (openat), so a symlink planted in the SST home
or in the state directory cannot redirect a read or a write. Writes go to a temporary file in
the same directory, are fsynced and then renamed over the target: a reader sees the old file or
the new one, never a mix. Several files that belong together (one stage's passphrase, state
and secrets) are replaced as one `Transaction`, journaled so that a kill -9 half-way is rolled
forward by the next command. Temporary files carry one prefix (`TEMP_PREFIX`) in folders the
next command knows, so `sweep_temp` can remove what a killed process left.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from vault import threads
from vault.errors import BusyError, ConfigError, UnsafePathError

TEMP_PREFIX = ".sst-vault-tmp-"
JOURNAL_PREFIX = "txn-"
ENV_PAUSE = "SST_VAULT_TEST_PAUSE"


def pause_point(step: str) -> None:
    """Test hook: stop this process with SIGSTOP at `step` when $SST_VAULT_TEST_PAUSE names it.

    The tests then SIGKILL the stopped process, which is how they kill sst-vault at an exact
    point between two file operations. Inert unless the variable is set to that step's name.
    """
    if os.environ.get(ENV_PAUSE) == step and hasattr(os, "kill"):
        import signal

        os.kill(os.getpid(), signal.SIGSTOP)


def _flag(name: str) -> int:
    # Read where used, never at import: Windows lacks O_DIRECTORY and O_NOFOLLOW, and an
    # AttributeError at import would hide the friendly "use WSL" message of _require_dir_fd.
    return getattr(os, name, 0)


def _dir_flags() -> int:
    return os.O_RDONLY | _flag("O_DIRECTORY") | _flag("O_NOFOLLOW") | _flag("O_CLOEXEC")


def _read_flags() -> int:
    # O_NONBLOCK: opening a planted FIFO for reading would otherwise wait forever for a writer.
    return os.O_RDONLY | _flag("O_NOFOLLOW") | _flag("O_NONBLOCK") | _flag("O_CLOEXEC")


def _unsafe(path: Path, what: str) -> UnsafePathError:
    return UnsafePathError(
        f"{path}: {what}", "sst-vault never follows symlinks there; remove it and retry"
    )


def _require_dir_fd() -> None:
    # openat/renameat are what make symlink-safe writes possible; Windows has neither.
    if os.open not in os.supports_dir_fd or not all(
        hasattr(os, name) for name in ("O_DIRECTORY", "O_NOFOLLOW")
    ):
        raise ConfigError(
            "this platform has no openat(), which sst-vault needs to write files safely",
            "run sst-vault on Linux or macOS (on Windows: inside WSL)",
        )


@contextlib.contextmanager
def open_dir(
    root: Path, parts: tuple[str, ...], create: bool = False, mode: int = 0o700
) -> Iterator[int]:
    """Yield a descriptor of root/parts[0]/…, refusing any symlink below `root`."""
    _require_dir_fd()
    fd = os.open(root, os.O_RDONLY | _flag("O_DIRECTORY") | _flag("O_CLOEXEC"))
    try:
        here = root
        for part in parts:
            here = here / part
            try:
                nxt = os.open(part, _dir_flags(), dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise named(exc, here) from None
                nxt = _open_dir_entry(part, fd, here)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _unsafe(here, "is a symlink or not a directory") from None
                raise
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def _open_dir_entry(part: str, fd: int, here: Path) -> int:
    try:
        return os.open(part, _dir_flags(), dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _unsafe(here, "is a symlink or not a directory") from None
        raise


def open_read(root: Path, parts: tuple[str, ...]) -> BinaryIO | None:
    """Open root/parts for reading, or None when it (or a parent folder) does not exist."""
    *folders, name = parts
    try:
        with open_dir(root, tuple(folders)) as dfd:
            try:
                fd = os.open(name, _read_flags(), dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _unsafe(root.joinpath(*parts), "is a symlink") from None
                raise
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _unsafe(root.joinpath(*parts), "is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bytes(root: Path, parts: tuple[str, ...]) -> bytes | None:
    handle = open_read(root, parts)
    if handle is None:
        return None
    with handle:
        return handle.read()


class PendingFile:
    """A fully written, fsynced temporary file waiting to replace its target."""

    def __init__(self, root: Path, parts: tuple[str, ...], tmp_name: str) -> None:
        self.root = root
        self.parts = parts
        self.tmp_name = tmp_name

    @property
    def target(self) -> Path:
        return self.root.joinpath(*self.parts)

    def replace(self) -> None:
        name = self.parts[-1]
        with open_dir(self.root, self.parts[:-1]) as dfd:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise _unsafe(self.target, "is a symlink or not a regular file")
            try:
                os.rename(self.tmp_name, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                os.fsync(dfd)
            except OSError as exc:
                raise named(exc, self.target) from None

    def discard(self) -> None:
        with contextlib.suppress(OSError), open_dir(self.root, self.parts[:-1]) as dfd:
            os.unlink(self.tmp_name, dir_fd=dfd)


WRITEBACK_STEP = 16 * 1024 * 1024
_IOV_MAX = 512  # buffers per os.writev: POSIX promises at least 16, Linux and macOS take 1024


def _write_all(fd: int, pieces: list[bytes]) -> None:
    """os.writev until every byte is written: a regular file may take less than asked."""
    views = [memoryview(piece) for piece in pieces if piece]
    while views:
        written = os.writev(fd, views)
        if not written:  # a regular file never takes nothing without an error: do not spin
            raise OSError(errno.EIO, "the file took no bytes")
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


class _Writeback(io.RawIOBase):
    """`AtomicWriter.streaming()`: writes go to `file`; every WRITEBACK_STEP bytes, a thread
    calls fdatasync on what was written so far while the writer goes on (one at a time)."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__()
        self.file = file
        self.unsynced = 0
        self.thread: threading.Thread | None = None
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.write_pieces([data])
        return len(data)

    def write_pieces(self, pieces: list[bytes]) -> None:
        """Write `pieces` in order: with os.writev, one system call per IOV_MAX of them.

        Every write goes through here once streaming started, so the file's buffer stays
        empty and the descriptor's offset is the one place the position is kept.
        """
        if not hasattr(os, "writev"):  # Windows
            for piece in pieces:
                self.file.write(piece)
        else:
            self.file.flush()
            fd = self.file.fileno()
            for start in range(0, len(pieces), _IOV_MAX):
                _write_all(fd, pieces[start : start + _IOV_MAX])
        self.unsynced += sum(map(len, pieces))
        if self.unsynced >= WRITEBACK_STEP and not (self.thread and self.thread.is_alive()):
            self.file.flush()
            self.unsynced = 0
            thread = threading.Thread(target=self._sync, name="sst-vault-writeback", daemon=True)
            threads.start(thread)  # only then `wait` may join it
            self.thread = thread

    def _sync(self) -> None:
        try:
            getattr(os, "fdatasync", os.fsync)(self.file.fileno())
        except OSError as exc:
            self.error = exc

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            raise self.error


class AtomicWriter:
    """Writes a temporary file beside the target; `finish()` makes it a `PendingFile`.

    Leaving the `with` block without `finish()` removes the temporary file, so an error at
    any point leaves the target exactly as it was.
    """

    def __init__(
        self, root: Path, parts: tuple[str, ...], mode: int = 0o600, dir_mode: int = 0o700
    ) -> None:
        self.root = root
        self.parts = parts
        self.mode = mode
        self._dir_cm = open_dir(root, tuple(parts[:-1]), create=True, mode=dir_mode)
        self._dfd = -1
        self._tmp_name = ""
        self.file: BinaryIO | None = None
        self.pending: PendingFile | None = None
        self._writeback: _Writeback | None = None

    @property
    def target(self) -> Path:
        return self.root.joinpath(*self.parts)

    @property
    def temp_path(self) -> Path:
        """Where the file is written until it is renamed to `target` (beside it)."""
        return self.root.joinpath(*self.parts[:-1], self._tmp_name)

    def __enter__(self) -> AtomicWriter:
        try:
            self._dfd = self._dir_cm.__enter__()
        except OSError as exc:
            raise named(exc, self.target.parent) from None
        self._tmp_name = f"{TEMP_PREFIX}{os.urandom(8).hex()}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _flag("O_NOFOLLOW") | _flag("O_CLOEXEC")
        try:
            fd = os.open(self._tmp_name, flags, self.mode, dir_fd=self._dfd)
        except OSError as exc:
            self._dir_cm.__exit__(None, None, None)
            raise named(exc, self.target) from None
        except BaseException:
            self._dir_cm.__exit__(None, None, None)
            raise
        os.fchmod(fd, self.mode)  # the umask must not change the mode we promise
        self.file = os.fdopen(fd, "w+b")
        return self

    def write(self, data: bytes) -> None:
        assert self.file is not None
        try:
            self.file.write(data)
        except OSError as exc:
            raise named(exc, self.target) from None

    def read_back(self) -> BinaryIO:
        """The bytes written so far, from the start (for round-trip checks)."""
        assert self.file is not None
        self.file.flush()
        self.file.seek(0)
        return self.file

    def streaming(self) -> BinaryIO:
        """The temporary file for a long stream of writes, sent to disk as they come.

        Every WRITEBACK_STEP bytes a background thread asks the kernel to write out what is
        written so far, so the fsync in `finish()` waits for the last stretch only, not for the
        whole file (100 MB of state: about 40 ms less on the critical path). Errors that
        writing back meets are raised by `finish()`.
        """
        assert self.file is not None
        self._writeback = _Writeback(self.file)
        return self._writeback  # type: ignore[return-value]

    def finish(self) -> PendingFile:
        assert self.file is not None
        try:
            if self._writeback is not None:
                self._writeback.wait()
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        except OSError as exc:
            raise named(exc, self.target) from None
        self.pending = PendingFile(self.root, self.parts, self._tmp_name)
        return self.pending

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if self._writeback is not None:
                with contextlib.suppress(OSError):
                    self._writeback.wait()  # its thread must not outlive the file
            if self.file is not None and not self.file.closed:
                try:
                    self.file.close()
                except OSError as error:
                    # Closing flushes the buffer, which fails again on a full disk: the
                    # temporary file goes below all the same, and the first error stands.
                    if exc_type is None:
                        raise named(error, self.target) from None
        finally:
            try:
                if self.pending is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._tmp_name, dir_fd=self._dfd)
            finally:
                self._dir_cm.__exit__(None, None, None)


def named(exc: OSError, path: Path) -> BaseException:
    """An OSError from an *at() call (bare file name) as a one-line error naming `path`."""
    if isinstance(exc, FileNotFoundError | FileExistsError):
        return exc  # callers branch on these
    from vault.errors import from_os_error

    return from_os_error(exc, path)


class Journal:
    """Where a `Transaction` writes down its plan, so a killed process is finished by the next.

    A journal lives in a folder of sst-vault's own (`dir_root`/`dir_parts`, e.g. the SST home's
    `.sst-vault/journal`) and names its files relative to `files_root`, which the caller gives
    again at recovery: a journal never decides by itself which folder it writes to.
    """

    def __init__(self, dir_root: Path, dir_parts: tuple[str, ...], files_root: Path) -> None:
        self.dir_root = dir_root
        self.dir_parts = dir_parts
        self.files_root = files_root

    @property
    def folder(self) -> Path:
        return self.dir_root.joinpath(*self.dir_parts)

    def pending(self) -> list[str]:
        """Names of journals a killed transaction left behind (cheap: one directory listing)."""
        try:
            with open_dir(self.dir_root, self.dir_parts) as dfd:
                return sorted(
                    n
                    for n in os.listdir(dfd)
                    if n.startswith(JOURNAL_PREFIX) and n.endswith(".json")
                )
        except (FileNotFoundError, NotADirectoryError):
            return []

    def write(self, name: str, state: str, entries: list[dict]) -> None:
        body = json.dumps({"version": 1, "state": state, "files": entries}).encode()
        write_atomic(self.dir_root, (*self.dir_parts, name), body)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError), open_dir(self.dir_root, self.dir_parts) as dfd:
            os.unlink(name, dir_fd=dfd)
            os.fsync(dfd)

    def recover(self) -> list[str]:
        """Finish every transaction a killed process left: forward once its journal was written.

        Returns the files that were put in place or back, for a message. Call it while holding
        the lock that the writing process held.
        """
        done: list[str] = []
        for name in self.pending():
            raw = read_bytes(self.dir_root, (*self.dir_parts, name))
            try:
                loaded = json.loads(raw or b"")
                state = loaded["state"]
                entries = [_Entry.load(e) for e in loaded["files"]]
                if state not in ("forward", "back"):
                    raise ValueError(state)
            except (ValueError, KeyError, TypeError, AttributeError):
                # Written whole or not at all (write_atomic): a broken one is not ours to act on.
                raise UnsafePathError(
                    f"{self.folder / name}: not a journal sst-vault wrote",
                    "move it away, then retry",
                ) from None
            for entry in entries if state == "forward" else reversed(entries):
                done += _finish(self.files_root, entry, forward=state == "forward")
            self.remove(name)
        return done


class _Entry:
    """One file of a transaction: its place, its new contents' temp name, its old contents'."""

    def __init__(self, parts: tuple[str, ...], tmp: str, backup: str | None) -> None:
        self.parts, self.tmp, self.backup = parts, tmp, backup

    def dump(self) -> dict:
        return {"parts": list(self.parts), "tmp": self.tmp, "backup": self.backup}

    @classmethod
    def load(cls, raw: dict) -> _Entry:
        parts, tmp, backup = raw["parts"], raw["tmp"], raw["backup"]
        names = [*parts, tmp] + ([backup] if backup is not None else [])
        if not parts or not all(
            isinstance(n, str) and n not in ("", ".", "..") and "/" not in n and "\\" not in n
            for n in names
        ):
            raise ValueError("bad path")
        if not tmp.startswith(TEMP_PREFIX) or (backup and not backup.startswith(TEMP_PREFIX)):
            raise ValueError("bad temp name")
        return cls(tuple(parts), tmp, backup)


def _exists(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _finish(root: Path, entry: _Entry, *, forward: bool) -> list[str]:
    """Roll one file forward (new contents in place) or back (old contents in place).

    Idempotent, so a kill during recovery is recovered again. A temp file still present means
    the file was not replaced yet; a missing one means it was.
    """
    name = entry.parts[-1]
    changed: list[str] = []
    try:
        cm = open_dir(root, entry.parts[:-1])
        dfd = cm.__enter__()
    except FileNotFoundError:
        return changed
    try:
        replaced = not _exists(dfd, entry.tmp)
        if forward:
            if not replaced:
                os.rename(entry.tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                changed.append(str(root.joinpath(*entry.parts)))
        elif not replaced:
            os.unlink(entry.tmp, dir_fd=dfd)
        elif entry.backup is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dfd)
                changed.append(str(root.joinpath(*entry.parts)))
        elif _exists(dfd, entry.backup):
            os.rename(entry.backup, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            changed.append(str(root.joinpath(*entry.parts)))
        if entry.backup is not None:
            # A backup is a hard link to the old file: renaming it onto that same file would do
            # nothing (POSIX), so it is removed by name whatever happened above.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.backup, dir_fd=dfd)
        os.fsync(dfd)
    finally:
        cm.__exit__(None, None, None)
    return changed


class Transaction:
    """Replace several files as one: all of them, or none, also across kill -9.

    Usage::

        with safefs.Transaction(journal) as txn:
            with safefs.AtomicWriter(root, parts) as out:
                out.write(data)
                txn.add(out.finish())
            ...
            txn.commit()

    `commit` first keeps each target's old contents under a temporary hard link, then writes
    the journal (the commit point), then renames every new file into place, then drops the
    links and the journal. A failure in this process puts every replaced file back; a kill
    after the journal was written is rolled forward by `Journal.recover` in the next command;
    a kill before it leaves only temporary files, which `sweep_temp` removes. Leaving the
    block without `commit` discards every pending file.

    `journal` None: no crash safety (the in-process put-back still holds), for files that git
    itself tracks and can restore.
    """

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal
        self.pending: list[PendingFile] = []
        self._kept: list[tuple[Path, _Entry]] = []

    def add(self, pending: PendingFile) -> None:
        if self.journal is not None and pending.root != self.journal.files_root:
            raise ValueError(f"{pending.target} is outside {self.journal.files_root}")
        self.pending.append(pending)

    def __enter__(self) -> Transaction:
        return self

    def commit(self, *, keep: bool = False) -> None:
        """Put every pending file in place. With `keep`, the old contents stay available
        until `release()`; leaving the `with` block with an exception (or `undo()`) puts them
        back: for a change that is not done until something else (a git commit) succeeded."""
        pause_point("txn-start")
        if not self.pending:
            return
        entries: list[_Entry] = []
        roots: list[Path] = []
        try:
            for item in self.pending:
                entries.append(_Entry(item.parts, item.tmp_name, _keep(item)))
                roots.append(item.root)
        except BaseException:
            for root, entry in zip(roots, entries, strict=False):
                _finish(root, entry, forward=False)
            raise
        name = f"{JOURNAL_PREFIX}{os.urandom(8).hex()}.json"
        journal = self.journal
        if journal is not None:
            try:
                journal.write(name, "forward", [e.dump() for e in entries])
            except BaseException:
                for root, entry in zip(roots, entries, strict=False):
                    _finish(root, entry, forward=False)
                raise
        pause_point("txn-journaled")
        try:
            for step, item in enumerate(self.pending, 1):
                item.replace()
                pause_point(f"txn-replaced-{step}")
        except BaseException:
            if journal is not None:
                with contextlib.suppress(OSError):
                    journal.write(name, "back", [e.dump() for e in entries])
            for root, entry in reversed(list(zip(roots, entries, strict=True))):
                with contextlib.suppress(OSError):
                    _finish(root, entry, forward=False)
            if journal is not None:
                with contextlib.suppress(OSError):
                    journal.remove(name)
            self.pending.clear()
            raise
        self.pending.clear()
        if keep:
            if journal is not None:  # rolling forward would be wrong once undo is possible
                journal.remove(name)
            self._kept = list(zip(roots, entries, strict=True))
            return
        for root, entry in zip(roots, entries, strict=True):
            _finish(root, entry, forward=True)  # drops the backup links
        if journal is not None:
            journal.remove(name)

    def release(self) -> None:
        """Drop the old contents kept by `commit(keep=True)`: the change is final."""
        kept, self._kept = self._kept, []
        for root, entry in kept:
            _finish(root, entry, forward=True)

    def undo(self) -> None:
        """Put back the old contents kept by `commit(keep=True)`."""
        kept, self._kept = self._kept, []
        for root, entry in reversed(kept):
            with contextlib.suppress(OSError):
                _finish(root, entry, forward=False)

    def __exit__(self, exc_type: object, *exc: object) -> None:
        for pending in self.pending:
            pending.discard()
        self.pending.clear()
        if exc_type is None:
            self.release()
        else:
            self.undo()


def _keep(item: PendingFile) -> str | None:
    """Hard-link the target's current contents under a temp name; None when it is new."""
    name = f"{TEMP_PREFIX}{os.urandom(8).hex()}"
    with open_dir(item.root, item.parts[:-1]) as dfd:
        try:
            os.link(item.parts[-1], name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
    return name


def sweep_temp(root: Path, folders: Iterable[tuple[tuple[str, ...], int]]) -> list[Path]:
    """Remove the temporary files a killed process left in `folders` below `root`.

    `folders` pairs a folder's parts with how many levels below it to search. Call it while
    holding the lock every writer there holds, after `Journal.recover` (which still needs the
    temporary files a journal names). Symlinks are never followed.
    """
    return _temp_files(root, folders, remove=True)


def find_temp(root: Path, folders: Iterable[tuple[tuple[str, ...], int]]) -> list[Path]:
    """The temporary files `sweep_temp` would remove, left in place (for `doctor`)."""
    return _temp_files(root, folders, remove=False)


def _temp_files(
    root: Path, folders: Iterable[tuple[tuple[str, ...], int]], *, remove: bool
) -> list[Path]:
    found: list[Path] = []
    for parts, depth in folders:
        try:
            with open_dir(root, parts) as dfd:
                _walk_temp(dfd, root.joinpath(*parts), depth, remove, found)
        except (FileNotFoundError, NotADirectoryError, UnsafePathError):
            continue
    return found


def _walk_temp(dfd: int, here: Path, depth: int, remove: bool, found: list[Path]) -> None:
    for entry in os.scandir(dfd):
        if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=dfd)
            found.append(here / entry.name)
        elif depth > 0 and entry.is_dir(follow_symlinks=False):
            try:
                sub = os.open(entry.name, _dir_flags(), dir_fd=dfd)
            except OSError:
                continue
            try:
                _walk_temp(sub, here / entry.name, depth - 1, remove, found)
            finally:
                os.close(sub)


def write_atomic(root: Path, parts: tuple[str, ...], data: bytes, mode: int = 0o600) -> None:
    with AtomicWriter(root, parts, mode) as out:
        out.write(data)
        out.finish().replace()


@contextlib.contextmanager
def exclusive(lock_file: Path, what: str, root: Path | None = None) -> Iterator[None]:
    """Hold an flock on `lock_file` so two sst-vault processes never interleave on `what`.

    With `root`, the folders from `root` down to the lock file are walked without following
    symlinks (the SST home is not ours: a planted link must not make us create files elsewhere).
    """
    _require_dir_fd()
    flags = os.O_RDWR | os.O_CREAT | _flag("O_NOFOLLOW") | _flag("O_CLOEXEC")
    if root is None:
        lock_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(lock_file, flags, 0o600)
    else:
        parts = lock_file.relative_to(root).parts
        with open_dir(root, parts[:-1], create=True) as dfd:
            try:
                fd = os.open(parts[-1], flags, 0o600, dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _unsafe(lock_file, "is a symlink") from None
                raise named(exc, lock_file) from None
    try:
        try:
            _flock(fd)
        except BlockingIOError:
            # Another prepare/commit is busy; wait for it rather than fail, it is short.
            wait = float(os.environ.get("SST_VAULT_LOCAL_LOCK_WAIT", "30"))
            if not _flock_wait(fd, wait):
                raise BusyError(
                    f"another sst-vault process is using {what}",
                    "wait for it to finish, then retry",
                ) from None
        yield
    finally:
        os.close(fd)


def _flock_wait(fd: int, seconds: float) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            _flock(fd)
            return True
        except BlockingIOError:
            time.sleep(0.05)
    return False


def _flock(fd: int) -> None:
    import fcntl  # POSIX only; _require_dir_fd has refused other platforms before this runs

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
