"""File system access that never follows a planted symlink and never leaves half a file.

Every directory below a trusted root is opened with O_NOFOLLOW and every file is read or
written relative to that directory's descriptor (openat), so a symlink planted in the SST home
or in the state directory cannot redirect a read or a write. Writes go to a temporary file in
the same directory, are fsynced and then renamed over the target: a reader sees the old file or
the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from vault.errors import BusyError, ConfigError, UnsafePathError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a planted FIFO for reading would otherwise wait forever for a writer.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
TEMP_PREFIX = ".sst-vault-tmp-"


def _unsafe(path: Path, what: str) -> UnsafePathError:
    return UnsafePathError(
        f"{path}: {what}", "sst-vault never follows symlinks there; remove it and retry"
    )


def _require_dir_fd() -> None:
    # openat/renameat are what make symlink-safe writes possible; Windows has neither.
    if os.open not in os.supports_dir_fd or not hasattr(os, "O_DIRECTORY"):
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
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        here = root
        for part in parts:
            here = here / part
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, mode, dir_fd=fd)
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
        return os.open(part, _DIR_FLAGS, dir_fd=fd)
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
                fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
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
            os.rename(self.tmp_name, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)

    def discard(self) -> None:
        with contextlib.suppress(OSError), open_dir(self.root, self.parts[:-1]) as dfd:
            os.unlink(self.tmp_name, dir_fd=dfd)


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

    @property
    def target(self) -> Path:
        return self.root.joinpath(*self.parts)

    def __enter__(self) -> AtomicWriter:
        self._dfd = self._dir_cm.__enter__()
        self._tmp_name = f"{TEMP_PREFIX}{os.urandom(8).hex()}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self._tmp_name, flags, self.mode, dir_fd=self._dfd)
        except BaseException:
            self._dir_cm.__exit__(None, None, None)
            raise
        os.fchmod(fd, self.mode)  # the umask must not change the mode we promise
        self.file = os.fdopen(fd, "w+b")
        return self

    def write(self, data: bytes) -> None:
        assert self.file is not None
        self.file.write(data)

    def read_back(self) -> BinaryIO:
        """The bytes written so far, from the start (for round-trip checks)."""
        assert self.file is not None
        self.file.flush()
        self.file.seek(0)
        return self.file

    def finish(self) -> PendingFile:
        assert self.file is not None
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.pending = PendingFile(self.root, self.parts, self._tmp_name)
        return self.pending

    def __exit__(self, *exc: object) -> None:
        try:
            if self.file is not None and not self.file.closed:
                self.file.close()
            if self.pending is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._tmp_name, dir_fd=self._dfd)
        finally:
            self._dir_cm.__exit__(None, None, None)


class Transaction:
    """Replace several files together: all pending files are discarded if anything fails."""

    def __init__(self) -> None:
        self.pending: list[PendingFile] = []

    def add(self, pending: PendingFile) -> None:
        self.pending.append(pending)

    def __enter__(self) -> Transaction:
        return self

    def commit(self) -> None:
        while self.pending:
            self.pending[0].replace()
            self.pending.pop(0)

    def __exit__(self, *exc: object) -> None:
        for pending in self.pending:
            pending.discard()
        self.pending.clear()


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
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
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
                raise
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
