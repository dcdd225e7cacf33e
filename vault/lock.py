"""The cross-machine deploy lock: one ref per app and stage on the git remote itself.

`<lock_prefix>/<app>/<stage>` (default `refs/sst-vault/locks/...`, outside refs/heads) points
at a parentless commit whose message records who holds the lock. Taking it is a plain push of
that commit: git refuses to create a ref that already exists (a parentless commit can never
fast-forward it), so of two runners exactly one wins. Two *identical* lock commits would both
"succeed" (the second push is "up to date"), hence the random nonce in every lock commit and
the ls-remote check that the ref points at our own commit. Release and break delete the ref
with a lease on the value they saw, so nobody deletes a lock taken after they looked.

The holder's commit id is also kept in `.git/sst-vault/locks/<app>/<stage>.json`, so a later
process in the same clone (`sst-vault lock release`) knows it holds the lock. Without a remote
the lock is a ref in the local repository (`git update-ref` with an empty old value is an
atomic create) and only guards this clone.

Everything read back from the remote is untrusted: a ref under the prefix may point at a blob,
a huge object, or a commit whose message is not ours or has fields of the wrong types. It is
still a lock (of an unknown holder), it never crashes `status`, `run` or `break`, and its text
is printed escaped (`vault.printable`). `--lock-timeout` is a deadline on every path: waiting
for a holder, failing to take over an expired lock the host refuses to replace, racing others.

A run whose state could not reach the branch keeps the lock and pushes the state to a rescue
ref, `<prefix parent>/rescue/<app>/<stage>/<sha12>` (default `refs/sst-vault/rescue/...`),
recording that ref in a new lock commit so `status` and `break` can say a state is waiting.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from vault.errors import GitError, LockError, LockHeldError, VaultError
from vault.gitstore import GitStore, porcelain_reason, porcelain_status
from vault.paths import check_stage
from vault.printable import printable, remote_lines
from vault.project import Project
from vault.records import user_name

LOCK_VERSION = 1
# A lock older than this is presumed dead (its job was killed) and may be taken over. Six
# hours is the longest default job timeout of the CI systems we know (GitHub Actions).
DEFAULT_TTL = 6 * 3600
MAX_COMMAND = 300  # characters of the command recorded in the lock (it is readable by all)
LOCK_IDENTITY = {
    "GIT_AUTHOR_NAME": "sst-vault lock",
    "GIT_AUTHOR_EMAIL": "sst-vault@localhost",
    "GIT_COMMITTER_NAME": "sst-vault lock",
    "GIT_COMMITTER_EMAIL": "sst-vault@localhost",
}
# Waiting: first retry soon (deploy locks change hands quickly in CI), then back off.
FIRST_DELAY, MAX_DELAY, BACKOFF = 0.2, 5.0, 1.6
MAX_LOCK_OBJECT = 64 * 1024  # a lock commit is a few hundred bytes; anything larger is foreign
MAX_FIELD = 1000  # characters kept of any text field read from a lock commit


@dataclass
class LockInfo:
    """What a lock commit records about its holder."""

    user: str
    host: str
    pid: int
    command: str
    ci_run: str | None
    created: str  # ISO 8601, UTC
    ttl: int  # seconds; 0 = never expires
    nonce: str
    app: str = ""
    stage: str = ""
    version: int = LOCK_VERSION
    rescue: str | None = None  # the rescue ref holding this holder's state, if it was rescued
    sha: str = ""  # the lock commit; not part of the message

    def age(self, now: float | None = None) -> float:
        try:
            created = datetime.strptime(self.created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return 0.0
        return max(0.0, (now if now is not None else time.time()) - created.timestamp())

    def expired(self, now: float | None = None) -> bool:
        return self.ttl > 0 and self.age(now) > self.ttl

    def describe(self) -> str:
        """One line: who, where, what, since when (used by refusals, waiting and status).

        Every field came from the remote: each is escaped, so a crafted lock cannot write
        terminal escapes or fake lines into our output.
        """
        text = f"{printable(self.user, 80)}@{printable(self.host, 120)} (pid {self.pid})"
        text += f" since {printable(self.created, 40) or 'an unknown time'}"
        text += f" ({format_age(self.age())} ago)"
        if self.command:
            text += f", running `{printable(self.command)}`"
        if self.ci_run:
            text += f", CI run {printable(self.ci_run)}"
        if self.expired():
            text += ", expired"
        if self.rescue:
            text += f", its state rescued to {printable(self.rescue)}"
        return text

    def message(self) -> str:
        body = {k: v for k, v in asdict(self).items() if k != "sha"}
        summary = f"sst-vault lock {self.app}/{self.stage} held by {self.user}@{self.host}"
        return f"{summary}\n\n{json.dumps(body, indent=1, sort_keys=True)}\n"

    @classmethod
    def unknown(cls, sha: str) -> LockInfo:
        """A ref under our prefix that we did not write: still a lock, of an unknown holder."""
        return cls("unknown", "unknown", 0, "", None, "", 0, "", sha=sha)

    @classmethod
    def parse(cls, message: str, sha: str) -> LockInfo:
        """The holder recorded in a lock commit's message; every field type-checked.

        A field of the wrong type (or out of range) falls back to "unknown"/0/None alone, so a
        partly foreign lock still shows what it can and never raises.
        """
        _, _, body = message.partition("\n\n")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            return cls.unknown(sha)

        def text(name: str, default: str = "") -> str:
            value = data.get(name)
            return value[:MAX_FIELD] if isinstance(value, str) else default

        def number(name: str, default: int = 0) -> int:
            value = data.get(name)
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
            return value if ok else default

        return cls(
            user=text("user", "unknown") or "unknown",
            host=text("host", "unknown") or "unknown",
            pid=number("pid"),
            command=text("command"),
            ci_run=text("ci_run") or None,
            created=text("created"),
            ttl=number("ttl"),
            nonce=text("nonce"),
            app=text("app"),
            stage=text("stage"),
            version=number("version"),
            rescue=text("rescue") or None,
            sha=sha,
        )


class LockBrokenError(LockError):
    """The lock this process took was broken by someone (and maybe taken by another)."""


def format_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def ci_run_url(env: Mapping[str, str] | None = None) -> str | None:
    """The URL of the CI run this process belongs to, from the usual CI variables."""
    env = os.environ if env is None else env
    if env.get("GITHUB_RUN_ID"):
        server = env.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
        return f"{server}/{env.get('GITHUB_REPOSITORY', '')}/actions/runs/{env['GITHUB_RUN_ID']}"
    if env.get("CI_JOB_URL"):
        return env["CI_JOB_URL"]
    if env.get("BUILD_BUILDID") and env.get("SYSTEM_COLLECTIONURI"):
        collection = env["SYSTEM_COLLECTIONURI"].rstrip("/")
        project = urllib.parse.quote(env.get("SYSTEM_TEAMPROJECT", ""))
        return f"{collection}/{project}/_build/results?buildId={env['BUILD_BUILDID']}"
    return None


class DeployLock:
    """The deploy lock of one app and stage, on `project.config.remote` (or local)."""

    def __init__(self, project: Project, stage: str, store: GitStore | None = None) -> None:
        self.project = project
        self.stage = check_stage(stage)
        self.store = store or GitStore(project.root)
        self.ref = f"{project.config.lock_prefix}/{project.app}/{self.stage}"
        self.remote: str | None = project.config.remote
        if not self.store.has_remote(self.remote):
            self.remote = None
        self._rejected = "the ref exists"
        self._said = ""
        # The lock commit being pushed: if we are interrupted before we know whether it won,
        # deleting the ref with a lease on this (unique) commit is still safe.
        self.attempted: str | None = None
        locks = self.store.git_dir / "sst-vault" / "locks"
        self.holder_file = locks / project.app / f"{self.stage}.json"

    @property
    def name(self) -> str:
        return f"{self.project.app}/{self.stage}"

    @property
    def local_only(self) -> bool:
        return self.remote is None

    def local_warning(self) -> str:
        return (
            f"no remote {self.project.config.remote!r} in this repository: the deploy lock of "
            f"{self.name} only guards this clone"
        )

    # --- reading ---------------------------------------------------------------------------

    def current_sha(self) -> str | None:
        if self.remote is None:
            result = self.store.git("rev-parse", "--verify", "-q", self.ref, check=False)
            return result.out.strip() or None
        try:
            return self.store.ls_remote(self.remote, self.ref)
        except GitError as exc:
            raise LockError(f"cannot read the deploy lock of {self.name}: {exc}") from None

    def status(self) -> LockInfo | None:
        """Who holds the lock now, or None when it is free."""
        for _ in range(3):
            sha = self.current_sha()
            if sha is None:
                return None
            info = self._read(sha)
            if info is not None:
                return info
        raise LockError(f"the deploy lock of {self.name} keeps changing; retry")

    def _read(self, sha: str) -> LockInfo | None:
        """The lock commit `sha`, fetched first when it is only on the remote.

        None only when the ref moved on meanwhile; an object that is not a readable lock
        commit (a blob, a huge object, one that cannot be fetched) is a lock of unknown holder,
        so it can still be shown and broken.
        """
        kind, size = self._object(sha)
        if kind is None and self.remote is not None:
            self.store.git(
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                self.remote,
                self.ref,
                check=False,
            )
            kind, size = self._object(sha)
        if kind is None:
            return None if self.current_sha() != sha else LockInfo.unknown(sha)
        if kind != "commit" or size > MAX_LOCK_OBJECT:
            return LockInfo.unknown(sha)
        got = self.store.git("cat-file", "commit", sha, check=False)
        if got.code != 0:
            return LockInfo.unknown(sha)
        _, _, message = got.out.partition("\n\n")
        return LockInfo.parse(message, sha)

    def _object(self, sha: str) -> tuple[str | None, int]:
        """(type, size) of a local object, or (None, 0) when this clone does not have it."""
        got = self.store.git("cat-file", "--batch-check", input=sha + "\n", check=False)
        parts = got.out.split()
        if got.code != 0 or len(parts) != 3 or not parts[2].isdigit():
            return None, 0
        return parts[1], int(parts[2])

    def held_here(self) -> str | None:
        """The lock commit this clone took (from the holder file), if any."""
        try:
            data = json.loads(self.holder_file.read_text())
        except (OSError, ValueError):
            return None
        if (
            not isinstance(data, dict)
            or data.get("ref") != self.ref
            or data.get("remote") != self.remote
        ):
            return None
        sha = data.get("sha")
        return sha if isinstance(sha, str) else None

    # --- taking ----------------------------------------------------------------------------

    def acquire(
        self,
        *,
        timeout: float = 0,
        ttl: int = DEFAULT_TTL,
        command: str = "",
        on_wait: Callable[[LockInfo], None] | None = None,
        on_takeover: Callable[[LockInfo], None] | None = None,
    ) -> LockInfo:
        """Take the lock, waiting up to `timeout` seconds with backoff; LockHeldError if not.

        The timeout is a deadline on every path: a holder that stays, an expired lock the
        host refuses to replace, a ref the host refuses to create.
        """
        mine = self._new_lock(ttl, command)
        self.attempted = mine.sha
        deadline = time.monotonic() + max(0.0, timeout)
        delay = FIRST_DELAY
        announced = None
        vanished = 0
        while True:
            if self._create(mine.sha):
                self._remember(mine.sha)
                return mine
            holder = self.status()
            if holder is None:
                vanished += 1  # released between our push and our look: try again at once
                if vanished > 10 or (vanished > 2 and time.monotonic() > deadline):
                    raise self._create_refused()
                time.sleep(0.05 * vanished)
                continue
            refused_takeover = ""
            if holder.expired():
                if self._replace(holder.sha, mine.sha):
                    self._remember(mine.sha)
                    if on_takeover:
                        on_takeover(holder)
                    return mine
                refused_takeover = self._rejected
            left = deadline - time.monotonic()
            if left <= 0:
                here = self.held_here() == holder.sha
                if refused_takeover and self.current_sha() == holder.sha:
                    raise LockHeldError(
                        f"the deploy lock of {self.name} is held by {holder.describe()}, and "
                        f"{self.remote or 'the repository'} refused to replace it "
                        f"({refused_takeover})",
                        f"if that job is gone, `sst-vault lock break --stage {self.stage}`",
                    )
                raise LockHeldError(
                    f"the deploy lock of {self.name} is held by {holder.describe()}"
                    + (" (taken from this clone)" if here else ""),
                    f"inside `sst-vault lock acquire` use `run --no-lock`; if its holder is gone, "
                    f"`sst-vault lock release --stage {self.stage}`"
                    if here
                    else "wait with --lock-timeout SECONDS, or if that job is gone, "
                    f"`sst-vault lock break --stage {self.stage}`",
                )
            if on_wait and holder.sha != announced:
                on_wait(holder)
                announced = holder.sha
            time.sleep(min(left, delay * random.uniform(0.5, 1.0)))
            delay = min(MAX_DELAY, delay * BACKOFF)

    def _create_refused(self) -> LockError:
        """The remote keeps refusing to create the lock ref although nobody holds it."""
        where = f"could not create {self.ref} on {self.remote}"
        if "hook declined" in self._rejected:
            said = f": {self._said}" if self._said else ""
            return LockError(
                f"{where}: a server-side hook declined it ({self._rejected}){said}",
                "ask the repository's admins to let pushes create refs under "
                f"{self.ref.rsplit('/', 2)[0]}/, or set lock_prefix in sst-vault.toml",
            )
        return LockError(
            f"{where}: {self._rejected}" + (f" ({self._said})" if self._said else ""),
            "the host may restrict ref names: set lock_prefix in sst-vault.toml",
        )

    def _new_lock(self, ttl: int, command: str, now: datetime | None = None) -> LockInfo:
        if len(command) > MAX_COMMAND:
            command = command[: MAX_COMMAND - 1] + "…"
        info = LockInfo(
            user=user_name(),
            host=socket.gethostname(),
            pid=os.getpid(),
            command=command,
            ci_run=ci_run_url(),
            created=(now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            ttl=max(0, int(ttl)),
            nonce=secrets.token_hex(16),  # two runners must never build the same commit
            app=self.project.app,
            stage=self.stage,
        )
        tree = self.store.git("mktree", input="").out.strip()
        commit = self.store.git("commit-tree", tree, "-m", info.message(), env=LOCK_IDENTITY)
        info.sha = commit.out.strip()
        return info

    def _create(self, sha: str) -> bool:
        """Create the ref at `sha` if it does not exist; True only when it now points at it."""
        if self.remote is None:
            return self.store.git("update-ref", self.ref, sha, "", check=False).code == 0
        result = self.store.git(
            "push", "--porcelain", self.remote, f"{sha}:{self.ref}", check=False
        )
        flag = porcelain_status(result.out, self.ref)
        if flag is None:
            raise LockError(
                f"cannot take the deploy lock of {self.name} on {self.remote}: {result.reason}",
                "check the network and your git credentials for that remote, then retry",
            )
        if flag == "!" and "remote rejected" in result.out:
            # Two pushes racing on the server: the loser's ref update fails. A host that
            # forbids the ref name fails the same way every time (see `acquire`).
            self._note_rejection(result.out, result.err)
        return flag == "*" and self.current_sha() == sha

    def _note_rejection(self, out: str, err: str) -> None:
        self._rejected = printable(porcelain_reason(out))
        self._said = remote_lines(err)

    def _replace(self, old: str, new: str) -> bool:
        """Take over an expired lock: only if it still is the one we saw.

        A forced update with a lease first; a host that refuses forced updates of the ref
        (denyNonFastForwards, a hook) may still allow a delete with a lease and a create.
        """
        if self.remote is None:
            return self.store.git("update-ref", self.ref, new, old, check=False).code == 0
        result = self.store.git(
            "push",
            "--porcelain",
            f"--force-with-lease={self.ref}:{old}",
            self.remote,
            f"{new}:{self.ref}",
            check=False,
        )
        now = self.current_sha()
        if now == new:
            return True
        if now != old:
            return False  # someone else took it over first
        self._note_rejection(result.out, result.err)
        if not self._delete(old):
            return False
        return self._create(new)

    def _remember(self, sha: str) -> None:
        self.holder_file.parent.mkdir(parents=True, exist_ok=True)
        record = {"ref": self.ref, "remote": self.remote, "sha": sha, "pid": os.getpid()}
        tmp = self.holder_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.holder_file)

    def _forget(self, sha: str | None = None) -> None:
        if sha is None or self.held_here() == sha:
            self.holder_file.unlink(missing_ok=True)

    # --- rescued states ---------------------------------------------------------------------

    @property
    def rescue_prefix(self) -> str:
        return f"{rescue_root(self.project.config.lock_prefix)}/{self.project.app}/{self.stage}/"

    def rescues(self) -> list[tuple[str, str]]:
        """(ref, sha) of every rescued state of this stage waiting on the remote."""
        pattern = self.rescue_prefix + "*"
        if self.remote is None:
            out = self.store.git("for-each-ref", "--format=%(refname) %(objectname)", pattern)
            pairs = [line.split(" ", 1)[::-1] for line in out.out.splitlines() if " " in line]
        else:
            result = self.store.git("ls-remote", "--refs", self.remote, pattern, check=False)
            if result.code != 0:
                raise LockError(f"cannot list rescued states on {self.remote}: {result.reason}")
            pairs = [line.split("\t", 1) for line in result.out.splitlines() if "\t" in line]
        return sorted((ref, sha) for sha, ref in pairs if ref.startswith(self.rescue_prefix))

    def note_rescue(self, held: LockInfo, ref: str) -> LockInfo | None:
        """Replace our lock commit by one that records `ref`; None if the remote refused."""
        fields = {**asdict(held), "sha": "", "rescue": ref, "nonce": secrets.token_hex(16)}
        info = LockInfo(**fields)
        tree = self.store.git("mktree", input="").out.strip()
        commit = self.store.git("commit-tree", tree, "-m", info.message(), env=LOCK_IDENTITY)
        info.sha = commit.out.strip()
        if self.remote is None:
            ok = self.store.git("update-ref", self.ref, info.sha, held.sha, check=False).code == 0
        else:
            self.store.git(
                "push",
                "--porcelain",
                f"--force-with-lease={self.ref}:{held.sha}",
                self.remote,
                f"{info.sha}:{self.ref}",
                check=False,
            )
            ok = self.current_sha() == info.sha
        if not ok:
            return None
        self._remember(info.sha)
        return info

    # --- giving back -------------------------------------------------------------------------

    def release(self, sha: str | None = None) -> bool:
        """Release the lock this clone holds; anyone else's lock is refused.

        False when it was already gone (broken by someone): there was nothing to release.
        """
        sha = sha or self.held_here()
        if sha is None:
            holder = self.status()
            raise LockError(
                f"this clone does not hold the deploy lock of {self.name}"
                + (f"; it is held by {holder.describe()}" if holder else "; it is not held"),
                f"only its holder releases it; for a stale lock use "
                f"`sst-vault lock break --stage {self.stage}`",
            )
        if self._delete(sha):
            self._forget(sha)
            return True
        holder = self.status()
        if holder is not None and holder.sha == sha:
            raise LockError(f"could not release the deploy lock of {self.name}; retry")
        self._forget(sha)
        if holder is not None:
            raise LockBrokenError(
                f"the deploy lock of {self.name} was broken and is now held by "
                f"{holder.describe()}; it was not released",
                "nothing to do for this clone's lock; check why it was broken",
            )
        return False

    def abandon(self) -> None:
        """After an interrupted or failed acquire: remove our lock commit if it got in."""
        if self.attempted is None:
            return
        try:
            self._delete(self.attempted)
        except LockError:
            return  # unreachable: keep the holder file, so `lock status` can say it is ours
        self._forget(self.attempted)

    def break_(self) -> LockInfo | None:
        """Remove whatever lock is there now (the one seen, not a newer one)."""
        holder = self.status()
        if holder is None:
            return None
        if not self._delete(holder.sha) and self.current_sha() == holder.sha:
            raise LockError(f"could not break the deploy lock of {self.name}; retry")
        self._forget(holder.sha)
        return holder

    def _delete(self, sha: str) -> bool:
        """Delete the ref if it still points at `sha`. False when it did not; raises if unsure."""
        if self.remote is None:
            return self.store.git("update-ref", "-d", self.ref, sha, check=False).code == 0
        result = self.store.git(
            "push",
            "--porcelain",
            f"--force-with-lease={self.ref}:{sha}",
            self.remote,
            f":{self.ref}",
            check=False,
        )
        flag = porcelain_status(result.out, self.ref)
        if flag is None:
            raise LockError(
                f"cannot reach {self.remote} to release the deploy lock of {self.name} "
                f"({result.reason}); it is still held by {sha[:12]}",
                f"run `sst-vault lock release --stage {self.stage}` from this clone once the "
                f"remote is reachable, or `sst-vault lock break --stage {self.stage}`",
            )
        return flag == "-"


def rescue_root(lock_prefix: str) -> str:
    """Where rescued states live: `rescue` next to the lock prefix (refs/sst-vault/rescue)."""
    parent = lock_prefix.rsplit("/", 1)[0]
    if parent == "refs":
        parent = lock_prefix
    return f"{parent}/rescue"


@contextlib.contextmanager
def holding(
    project: Project,
    stages: Iterable[str],
    store: GitStore,
    *,
    timeout: float = 0,
    ttl: int = DEFAULT_TTL,
    command: str = "",
    info: Callable[[str], None] = lambda _msg: None,
) -> Iterator[None]:
    """Hold the deploy locks of `stages` for a change that must not race a deploy of them.

    Taken in sorted order, so two holders of overlapping sets never wait on each other in a
    circle; every one is given back on the way out. When the body raised, a lock that cannot
    be released is only reported, so the body's own error is the one that surfaces.
    """

    def waiting(holder: LockInfo) -> None:
        info(f"sst-vault: waiting for the deploy lock: {holder.describe()}")

    held: list[tuple[DeployLock, LockInfo]] = []
    try:
        for stage in sorted(set(stages)):
            lock = DeployLock(project, stage, store)
            try:
                mine = lock.acquire(timeout=timeout, ttl=ttl, command=command, on_wait=waiting)
            except BaseException:
                lock.abandon()
                raise
            held.append((lock, mine))
        yield
    except BaseException:
        _release_all(held, info, quiet=True)
        raise
    _release_all(held, info, quiet=False)


def _release_all(
    held: list[tuple[DeployLock, LockInfo]], info: Callable[[str], None], *, quiet: bool
) -> None:
    failed: VaultError | None = None
    broken = "sst-vault: warning: the deploy lock of {} was broken while this command held it"
    for lock, mine in reversed(held):
        try:
            if not lock.release(mine.sha):
                info(broken.format(lock.name))
        except LockBrokenError as exc:  # someone else's now: nothing of ours to give back
            info(f"{broken.format(lock.name)}: {exc}")
        except VaultError as exc:
            info(f"sst-vault: the deploy lock of {lock.name} was not released: {exc}")
            failed = failed or exc
    if failed is not None and not quiet:
        raise failed


__all__ = [
    "DEFAULT_TTL",
    "DeployLock",
    "LockBrokenError",
    "LockInfo",
    "ci_run_url",
    "format_age",
    "holding",
    "rescue_root",
]
