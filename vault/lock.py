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
"""

from __future__ import annotations

import contextlib
import getpass
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
from vault.project import Project

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
        """One line: who, where, what, since when (used by refusals, waiting and status)."""
        text = f"{self.user}@{self.host} (pid {self.pid}) since {self.created}"
        text += f" ({format_age(self.age())} ago)"
        if self.command:
            text += f", running `{self.command}`"
        if self.ci_run:
            text += f", CI run {self.ci_run}"
        if self.expired():
            text += ", expired"
        return text

    def message(self) -> str:
        body = {k: v for k, v in asdict(self).items() if k != "sha"}
        summary = f"sst-vault lock {self.app}/{self.stage} held by {self.user}@{self.host}"
        return f"{summary}\n\n{json.dumps(body, indent=1, sort_keys=True)}\n"

    @classmethod
    def parse(cls, message: str, sha: str) -> LockInfo:
        _, _, body = message.partition("\n\n")
        try:
            data = json.loads(body)
            fields = set(cls.__dataclass_fields__) - {"sha"}
            return cls(**{k: v for k, v in data.items() if k in fields}, sha=sha)
        except (ValueError, TypeError):
            # A ref under our prefix that we did not write: still a lock, of unknown holder.
            return cls("unknown", "unknown", 0, "", None, "", 0, "", sha=sha)


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


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


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
        """The lock commit `sha`, fetched first when it is only on the remote."""
        got = self.store.git("cat-file", "commit", sha, check=False)
        if got.code != 0 and self.remote is not None:
            self.store.git(
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                self.remote,
                self.ref,
                check=False,
            )
            got = self.store.git("cat-file", "commit", sha, check=False)
        if got.code != 0:
            return None  # the ref moved on between ls-remote and fetch
        _, _, message = got.out.partition("\n\n")
        return LockInfo.parse(message, sha)

    def held_here(self) -> str | None:
        """The lock commit this clone took (from the holder file), if any."""
        try:
            data = json.loads(self.holder_file.read_text())
        except (OSError, ValueError):
            return None
        if data.get("ref") != self.ref or data.get("remote") != self.remote:
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
        """Take the lock, waiting up to `timeout` seconds with backoff; LockHeldError if not."""
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
                if vanished > 10:
                    raise LockError(
                        f"could not create {self.ref} on {self.remote}: {self._rejected}",
                        "the host may restrict ref names: set lock_prefix in sst-vault.toml",
                    )
                time.sleep(0.05 * vanished)
                continue
            if holder.expired():
                if self._replace(holder.sha, mine.sha):
                    self._remember(mine.sha)
                    if on_takeover:
                        on_takeover(holder)
                    return mine
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                here = self.held_here() == holder.sha
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

    def _new_lock(self, ttl: int, command: str, now: datetime | None = None) -> LockInfo:
        if len(command) > MAX_COMMAND:
            command = command[: MAX_COMMAND - 1] + "…"
        info = LockInfo(
            user=_user(),
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
            self._rejected = porcelain_reason(result.out)
        return flag == "*" and self.current_sha() == sha

    def _replace(self, old: str, new: str) -> bool:
        """Take over an expired lock: only if it still is the one we saw."""
        if self.remote is None:
            return self.store.git("update-ref", self.ref, new, old, check=False).code == 0
        self.store.git(
            "push",
            "--porcelain",
            f"--force-with-lease={self.ref}:{old}",
            self.remote,
            f"{new}:{self.ref}",
            check=False,
        )
        return self.current_sha() == new

    def _remember(self, sha: str) -> None:
        self.holder_file.parent.mkdir(parents=True, exist_ok=True)
        record = {"ref": self.ref, "remote": self.remote, "sha": sha, "pid": os.getpid()}
        tmp = self.holder_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.holder_file)

    def _forget(self, sha: str | None = None) -> None:
        if sha is None or self.held_here() == sha:
            self.holder_file.unlink(missing_ok=True)

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
]
