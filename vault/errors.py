"""The one exception hierarchy of sst-vault.

Every error a user can cause is a `VaultError` whose message is one line that says what
happened and what to do. The CLI maps `exit_code` to the process exit status in one place
(`vault.cli.main`); nothing else decides exit codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

EXIT_REFUSED = 1  # the operation was refused or failed; nothing was half-written
EXIT_USAGE = 2  # usage or configuration error: fix the command line, config or environment


class VaultError(Exception):
    """Base of every error sst-vault reports to a user."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}: {self.hint}"
        return self.message


class ReportedFailure(VaultError):
    """Exit 1 with nothing more to say: the command's own output already did (`diff
    --exit-code` printed the changes, `doctor` its failing checks). `main` prints no line."""

    def __init__(self) -> None:
        super().__init__("")


# --- usage and configuration (exit 2) ---------------------------------------------------


class UsageError(VaultError):
    """A bad argument: a stage name SST would not produce, conflicting options."""

    exit_code = EXIT_USAGE


class ConfigError(VaultError):
    """sst-vault.toml missing or invalid, not a git repository, unsafe state_dir."""

    exit_code = EXIT_USAGE


class NoKeyError(ConfigError):
    """No key source is available (no variable, no file, no usable keyring)."""


class KeyFormatError(ConfigError):
    """A key was found but it is not a key sst-vault can use."""


# --- encrypted files (exit 1) -----------------------------------------------------------


class FileFormatError(VaultError):
    """A vault file that cannot be opened. `reason` is the class a user acts on."""

    reason = "unreadable"

    def __init__(self, path: Path | str, detail: str, hint: str | None = None) -> None:
        from pathlib import Path

        self.path = Path(path)
        self.detail = detail
        super().__init__(f"{path}: {self.reason}: {detail}", hint)


class WrongKeyError(FileFormatError):
    reason = "wrong key"


class TamperedError(FileFormatError):
    reason = "tampered"


class NotAVaultFileError(FileFormatError):
    reason = "not a vault file"


class NewerFormatError(FileFormatError):
    reason = "newer format"


class TrustError(VaultError):
    """The key record, the wrapped data key or the history says: not the vault a member trusts.

    Never a `FileFormatError`: it concerns the whole vault, not one file, so no command lists
    it per file as "damaged" or skips over it.
    """

    def __init__(self, path: Path | str, detail: str, hint: str | None = None) -> None:
        from pathlib import Path

        self.path = Path(path)
        self.detail = detail
        super().__init__(f"{path}: tampered: {detail}", hint)


class KeyPinError(VaultError):
    """The vault's data key differs from the pinned SST_VAULT_KEY_ID (a swapped data key)."""


# --- sync, git, lock (exit 1) -----------------------------------------------------------


class RefusedError(VaultError):
    """An operation that would lose data: uncommitted home changes, a rollback, divergence."""


class InvalidStateError(VaultError):
    """SST state that SST itself would refuse (not JSON), or a file that is not what SST writes."""


class UnsafePathError(VaultError):
    """A symlink or other surprise where sst-vault writes or reads; never followed."""


class BusyError(VaultError):
    """Another sst-vault process holds the local file lock of this SST home or repository."""


class GitError(VaultError):
    """A git operation failed (push rejected, remote unreachable, repository broken)."""


class LockHeldError(VaultError):
    """The cross-machine deploy lock is held by someone else."""


class LockError(VaultError):
    """The deploy lock could not be read, taken or released."""


class ConflictError(RefusedError):
    """A vault file is unmerged (a conflicted merge, rebase or cherry-pick): pick a side first."""


class FileSystemError(VaultError):
    """The operating system refused a file operation: disk full, no permission, read-only."""


class ResourceError(VaultError):
    """The system refused a new thread (`threads.start`) or process: a process limit or no
    memory."""


# What to do when the system refuses a new thread or process (`EAGAIN` from fork, too).
LIMIT_HINT = (
    "a process limit is reached (ulimit -u, a container's pids.max) or memory is short:"
    " wait for other jobs to end or raise the limit, then retry"
)


# errno -> what to do. Names, not numbers: the numbers differ between platforms.
OS_HINTS = {
    "ENOSPC": "the disk is full: free space on that file system, then retry "
    "(nothing was replaced; a partly written temporary file was removed)",
    "EDQUOT": "your disk quota is used up: free space, then retry (nothing was replaced)",
    "EACCES": "permission denied: check the owner and mode of that file and its folder, "
    "then retry as the user who owns them",
    "EPERM": "operation not permitted: check the owner and mode of that file and its folder",
    "EROFS": "that file system is read-only: remount it read-write, or point sst-vault "
    "elsewhere (--sst-home DIR / --project DIR)",
    "ENOTDIR": "a file stands where a folder is expected: move it away, then retry",
    "EISDIR": "a folder stands where a file is expected: move it away, then retry",
    "EMFILE": "too many open files: raise the limit (ulimit -n), then retry",
    "EIO": "the disk reported an I/O error: check the disk, then retry",
    "EAGAIN": LIMIT_HINT,  # fork refused: a new git could not start
}


def from_os_error(exc: OSError, path: Path | str | None = None) -> FileSystemError:
    """One `FileSystemError` for any OSError: the file, what went wrong, what to do.

    The one place an OSError becomes a user-facing line (`vault.cli.main` calls it for any
    OSError that no caller turned into a VaultError with a better path).
    """
    import errno as errno_mod
    import os

    # A name from an *at() call (dir_fd) is bare, e.g. the temporary file's: the caller's
    # path (the file being written) says more then.
    where: object = exc.filename
    if path is not None and not (isinstance(where, str) and os.path.isabs(where)):
        where = path
    elif where is not None and exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    name = errno_mod.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or (
        os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
    )
    hint = OS_HINTS.get(name, "check that file and its folder, then retry")
    message = f"{where}: {reason}" if where is not None else reason
    return FileSystemError(message, hint)
