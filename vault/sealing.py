"""The one way a vault file is written: seal beside it, read back, authenticate, then hand over.

Commit, migrate, rollback, resolve and rotate all seal through `seal_to_repo`; nothing is
pending until the sealed bytes opened and matched what was sealed. What may be sealed is
checked first (`validate_state`: what SST itself would refuse never reaches the repo); for a
large checkpoint the JSON check runs beside the sealing in a child process (`JsonCheckProcess`),
its verdict bound to the bytes sealed by their SHA-256.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from vault import envelope, safefs, threads
from vault.envelope import FileKey, Header
from vault.errors import InvalidStateError, RefusedError, ResourceError
from vault.project import Project
from vault.stagefiles import Discard

OVERLAP_MIN = 4 * 1024 * 1024  # below this, a validating child or thread costs more than it saves


def seal_to_repo(
    project: Project,
    key: FileKey,
    stage: str,
    kind: str,
    source: BinaryIO,
    *,
    serial: int,
    writer: str,
    before_pending: Callable[[], None] | None = None,
    store_ahead: Callable[[Path, Path], subprocess.Popen[bytes] | None] | None = None,
    **seal_options: Any,
) -> tuple[Header, safefs.PendingFile]:
    """Seal `source` beside the stage's vault file and check that it opens; caller replaces.

    The one way commit, migrate, rollback and rotate write a vault file: nothing is pending
    until the sealed bytes were read back, authenticated and matched to what was sealed. It
    writes the newest format, chunked unless `sst-vault.toml` says `chunking = false`.
    `before_pending` runs once the sealed file verified and may still refuse it (the JSON check
    that ran alongside). `store_ahead(temp, path)` (a large file only) starts git storing the
    sealed bytes while they are verified.
    """
    path = project.repo.vault_file(kind, stage)
    meta = {"app": project.app, "stage": stage, "kind": kind}
    # The stack stops what runs beside the verification before the temporary file goes.
    with (
        safefs.AtomicWriter(project.root, project.repo.vault_parts(kind, stage), 0o644) as out,
        contextlib.ExitStack() as stack,
    ):
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
        back = out.read_back()
        syncing = _sync_early(back)  # to disk while it is read back: `finish` fsyncs again
        storing = (
            store_ahead(out.temp_path, path)
            if store_ahead is not None and os.fstat(back.fileno()).st_size >= STORE_AHEAD_MIN
            else None
        )
        stack.callback(_stop, storing)
        opened = envelope.open_(back, Discard(), key, path, **meta)
        if opened.fingerprint != sealed.fingerprint:
            raise RefusedError(
                f"{path}: the sealed file does not round-trip",
                "nothing was replaced; report this bug",
            )
        if before_pending is not None:
            before_pending()
        if syncing is not None:
            syncing.join()
        if storing is not None:
            storing.wait()
        return sealed, out.finish()


SYNC_EARLY_MIN = 1024 * 1024  # a smaller file's fsync is quick whenever it runs
STORE_AHEAD_MIN = 4 * 1024 * 1024  # below this, one more git process costs what it saves


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Kill a git that stores ahead if it still runs (the file it reads is going away)."""
    if proc is not None and proc.returncode is None:
        proc.kill()
        proc.wait()


def _sync_early(file: BinaryIO) -> threading.Thread | None:
    """Start the sealed file's fsync on a thread (on a duplicate descriptor), so the disk
    writes it while the file is read back and authenticated; the fsync before the rename
    still happens in `finish`, on a file that by then has little or nothing left to write."""
    if file.seek(0, io.SEEK_END) < SYNC_EARLY_MIN:
        file.seek(0)
        return None
    file.seek(0)
    fd = os.dup(file.fileno())

    def sync() -> None:
        try:
            os.fsync(fd)
        except OSError:
            pass  # finish's own fsync reports it
        finally:
            os.close(fd)

    thread = threading.Thread(target=sync, name="sst-vault-fsync", daemon=True)
    try:
        threads.start(thread)
    except ResourceError:
        os.close(fd)
        raise
    return thread


# zlib level for commit: DESIGN wants repo growth <= 0.25 x plaintext; on Pulumi JSON level 3
# gives ~0.18 (level 6: ~0.17) in about 60% of level 6's time. Readers do not care. Above 1 MiB
# with ISA-L installed, the envelope uses ISA-L's level 2 instead (~0.195, 5x faster).
COMMIT_COMPRESSION_LEVEL = 3


class Validation:
    """Validate, in a worker thread, exactly the chunks that `seal` reads from a file (a large
    file of another kind than `app`, or where no child process can share the file)."""

    def __init__(self, kind: str, path: Path, remedies: Remedies) -> None:
        import queue
        import threading

        self.kind = kind
        self.path = path
        self.remedies = remedies
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
            _validate_chunks(self.kind, chunks(), self.path, self.remedies)
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

    def __enter__(self) -> Validation:
        threads.start(self.thread)
        return self

    def finish(self) -> None:
        """Wait for the validating thread; raise what it found (before anything is pending)."""
        if self.thread.is_alive():
            self.chunks.put(None)
            self.thread.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.finish()
        else:
            with contextlib.suppress(BaseException):
                self.finish()  # another error is already on its way


class JsonCheckProcess:
    """The JSON check of a large checkpoint in a child process, beside the sealing.

    json's C scanner holds the GIL for the whole parse (~0.6 s at 100 MB): in a thread it only
    takes turns with the sealing, in a child it runs on the other core. The child reads the
    file through an inherited descriptor (the very file being sealed, whatever happens to its
    path) and reports the SHA-256 of every byte it checked; `finish` takes its verdict only when
    that is the digest of the bytes sealed (else the file changed meanwhile). The child gets no
    secret: the environment without SST_VAULT_KEY*, no key, only the state file's descriptor.
    A child that dies (killed, out of memory) refuses the commit.
    """

    def __init__(self, handle: BinaryIO, path: Path, remedies: Remedies) -> None:
        import sys

        from vault.gitstore import SECRET_PREFIX

        self.path = path
        self.remedies = remedies
        fd = handle.fileno()
        root = str(Path(__file__).resolve().parent.parent)
        code = (
            f"import sys; sys.path.insert(0, {root!r}); "
            f"from vault.jsoncheck import child_main; child_main({fd})"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(SECRET_PREFIX)}
        # -I -S: nothing from the user's site or PYTHON* variables; only json and re are needed.
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", code],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            pass_fds=(fd,),
            env=env,
        )

    @staticmethod
    def usable() -> bool:
        """Whether a child can share the file (POSIX descriptors, a known interpreter)."""
        import sys

        return os.name == "posix" and bool(sys.executable)

    def finish(self, sealed_sha256: str) -> None:
        """Wait for the verdict on the bytes whose SHA-256 is `sealed_sha256`; raise it."""
        import hmac
        import signal

        out, _ = self.proc.communicate()
        code = self.proc.returncode
        try:
            report = json.loads(out)
            digest, error = report["sha256"], report["error"]
            if not isinstance(digest, str) or not isinstance(error, str | None):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            report = None
        if code != 0 or report is None:
            if code < 0:
                try:
                    how = f"was killed by {signal.Signals(-code).name}"
                except ValueError:
                    how = f"was killed by signal {-code}"
            else:
                how = f"exited with status {code}" if code else "gave no verdict"
            raise RefusedError(
                f"{self.path}: the JSON check did not finish (its process {how})",
                "nothing was replaced; retry the commit (if it fails again, check memory limits)",
            )
        if not hmac.compare_digest(digest.encode(), sealed_sha256.encode()):
            raise envelope.ChangedWhileReading(
                "the file changed while it was being encrypted", "wait for SST to finish and retry"
            )
        if error is not None:
            raise InvalidStateError(f"{self.path} is not valid JSON ({error})", self.remedies.json)

    def __enter__(self) -> JsonCheckProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.returncode is None:  # not waited for: the commit stopped early
            self.proc.kill()
            self.proc.communicate()


def _validate_chunks(kind: str, chunks: Iterator[bytes], path: Path, remedies: Remedies) -> None:
    if kind != "app":
        validate_state(kind, b"".join(chunks), path, remedies)
        return
    from vault import jsoncheck

    try:
        jsoncheck.check(chunks)
    except (ValueError, RecursionError) as exc:
        raise _invalid_json(path, exc, remedies) from None


@dataclass(frozen=True)
class Remedies:
    """What the error for a refused plaintext file tells the user to do: it depends on where
    the file came from (the SST home for `commit`, the recipe's folder for `migrate`)."""

    json: str
    passphrase: str
    secret: str
    empty_passphrase: str  # what an empty passphrase file is called


FROM_HOME = Remedies(
    json="SST would refuse it too; redeploy or restore it with `sst-vault prepare --force`",
    passphrase="restore it with `sst-vault prepare --force`",
    secret="re-set the secret with `sst secret set`",
    empty_passphrase="an empty SST passphrase",
)


def validate_state(kind: str, data: bytes, path: Path, remedies: Remedies = FROM_HOME) -> None:
    """Refuse what SST itself would refuse, so a corrupt state never reaches the repo."""
    if kind == "app":
        try:
            # Discarding each object as it is parsed keeps memory near the input's size.
            json.loads(data, object_pairs_hook=lambda _pairs: None)
        except (ValueError, RecursionError) as exc:
            raise _invalid_json(path, exc, remedies) from None
    elif kind == "passphrase" and not data.strip():
        # Opaque to us: usually base64 of 32 bytes, but SST stores $SST_PASSPHRASE verbatim.
        raise InvalidStateError(f"{path} is {remedies.empty_passphrase}", remedies.passphrase)
    elif kind == "secret" and len(data) < 12 + 16:
        raise InvalidStateError(f"{path} is too short to be an SST secret file", remedies.secret)


def _invalid_json(path: Path, exc: BaseException, remedies: Remedies) -> InvalidStateError:
    return InvalidStateError(f"{path} is not valid JSON ({exc})", remedies.json)


__all__ = ["FROM_HOME", "Remedies", "seal_to_repo", "validate_state"]
