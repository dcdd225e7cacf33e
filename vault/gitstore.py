"""Where vault files are stored: the current branch of the project's git repository.

This is the one seam for the storage location (DESIGN.md: a later mode keeps vault files on a
dedicated state branch). Everything here runs real git through GitPython; it stages exactly
the paths it is given and never runs `git add .`. The secret key never reaches git: it was
taken out of this process's environment when the CLI started (`vault.keyenv.take_environment`),
and every git child gets `git_env()`, which drops any `SST_VAULT_KEY*` variable as well.

Pushing never forces and never resets: when the remote branch moved, its commits are fetched
and ours rebased onto them, unless the remote changed a file ours change too (two deploys of
one stage diverged): then the local commit is kept as it is and the push is refused.

Under contention (many runners pushing different stages to one branch) git words a lost race
in several ways: "fetch first", "non-fast-forward", "[remote rejected] (failed to update ref)",
"cannot lock ref ...: is at X but expected Y", "failed to lock", "incorrect old value
provided". The wording is not what decides: after any rejection the remote branch is fetched,
and if it is no longer contained in HEAD the remote moved (rebase and retry); if it is, the
refusal was either a lock held for a moment on the server (retry) or for good (a protected
branch, a hook: `PushRefusedError`). Retries back off with jitter until a deadline (minutes,
`SST_VAULT_PUSH_TIMEOUT`), never a fixed small count: sixteen runners must all get through.
"""

from __future__ import annotations

import os
import random
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vault.errors import ConfigError, GitError, RefusedError, UsageError
from vault.printable import printable, remote_lines

if TYPE_CHECKING:
    import git

# Commits made by sst-vault when the user has no git identity (a bare CI runner).
FALLBACK_NAME = "sst-vault"
FALLBACK_EMAIL = "sst-vault@localhost"
# How long a push keeps rebasing and retrying while others push to the same branch.
DEFAULT_PUSH_TIMEOUT = 600.0
ENV_PUSH_TIMEOUT = "SST_VAULT_PUSH_TIMEOUT"
# Backoff between push attempts: jittered, so runners that lost one race do not meet again.
PUSH_FIRST_DELAY, PUSH_MAX_DELAY, PUSH_BACKOFF = 0.1, 3.0, 1.5
# Words of a lost race: worth a retry even when the fetch that followed found the branch
# unmoved (a concurrent push held the server's ref lock and then failed, or moved it again).
TRANSIENT = (
    "failed to lock",
    "cannot lock ref",
    "failed to update ref",
    "incorrect old value",
    "fetch first",  # the remote moved, then our fetch raced it: ask again
    "non-fast-forward",
)
REACH_HINT = "check the network and your git credentials for that remote, then retry"


# --- git plumbing that returns bytes ------------------------------------------------------


def git_env() -> dict[str, str]:
    """The environment for git children: never any sst-vault secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SST_VAULT_KEY")}
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    return env


def git_run(
    top: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run git in `top` with `git_env()` (plus `env`), output as bytes; GitError when `check`."""
    proc = subprocess.run(
        ["git", *args],
        cwd=top,
        env={**git_env(), **(env or {})},
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GitError(f"git {args[0]} failed: {reason[-1] if reason else proc.returncode}")
    return proc


def resolve_commit(top: Path, rev: str) -> str:
    """The full commit id of `rev`, or a usage error naming it."""
    if not rev or rev.startswith("-"):
        raise UsageError(f"invalid revision {rev!r}", "give a commit, branch or tag")
    proc = git_run(top, "rev-parse", "--verify", "-q", f"{rev}^{{commit}}", check=False)
    if proc.returncode != 0:
        raise UsageError(
            f"unknown revision {rev!r}", "see `sst-vault log STAGE` or `git log` for commits"
        )
    return proc.stdout.decode().strip()


def show_blob(top: Path, commit: str, rel: str) -> bytes | None:
    """The bytes of `rel` in `commit` (already resolved), or None when it was not there."""
    proc = git_run(top, "cat-file", "blob", f"{commit}:{rel}", check=False)
    return proc.stdout if proc.returncode == 0 else None


def iter_blobs(
    top: Path, shas: Iterable[str], head: int | None = None
) -> Iterator[tuple[str, bytes | None]]:
    """Stream blobs through one `git cat-file --batch`, one in memory at a time.

    With `head`, only each blob's first `head` bytes are kept (the rest is read and dropped).
    """
    wanted = list(dict.fromkeys(shas))
    if not wanted:
        return
    proc = subprocess.Popen(
        ["git", "cat-file", "--batch"],
        cwd=top,
        env=git_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def feed() -> None:
        try:
            proc.stdin.write("".join(f"{s}\n" for s in wanted).encode())  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        for sha in wanted:
            line = proc.stdout.readline().decode().split()
            if len(line) != 3:
                yield sha, None
                continue
            size = int(line[2])
            if head is None:
                data = proc.stdout.read(size)
            else:
                data = proc.stdout.read(min(size, head))
                rest = size - len(data)
                while rest > 0:
                    rest -= len(proc.stdout.read(min(rest, 1 << 20))) or rest
            proc.stdout.read(1)
            yield sha, data if line[1] == "blob" else None
    finally:
        proc.stdout.close()
        proc.wait()
        writer.join()


# What git prints when a lock file is in its way ("Unable to create '…/index.lock': File exists").
_LOCK_RE = re.compile(r"Unable to create '([^']+\.lock)': File exists")


def lock_file_error(path: Path | str) -> GitError:
    """The one message for a git lock file in the way: which file, and how to recover."""
    return GitError(
        f"git cannot commit: {path} exists (left by a git process that was killed, "
        "or one that is still running)",
        f"if no git process is running in this repository, remove it with "
        f"`rm {shlex.quote(str(path))}`, then retry",
    )


def known_git_failure(text: str, where: Path | str = "the repository") -> GitError | None:
    """A one-line GitError for the failures a user fixes outside git: a lock file in the way
    (named, with the command that removes it), a full disk or a read-only file system."""
    match = _LOCK_RE.search(text)
    if match:
        return lock_file_error(match.group(1))
    from vault.errors import OS_HINTS

    for needle, name in (
        ("No space left on device", "ENOSPC"),
        ("Disk quota exceeded", "EDQUOT"),
        ("Read-only file system", "EROFS"),
    ):
        if needle in text:
            return GitError(f"git cannot write to {where}: {needle}", OS_HINTS[name])
    return None


class DivergedError(RefusedError):
    """The remote changed the same state this clone committed: never rebased, never forced."""


class PushRefusedError(GitError):
    """The remote refuses the branch update for good (a protection rule, a hook), unmoved."""


class UnreachableError(GitError):
    """The remote cannot be reached (network, credentials, repository gone)."""


class PushTimeoutError(GitError):
    """The remote kept moving (or kept its ref locked) until the push deadline."""


def push_timeout(env: dict[str, str] | None = None) -> float:
    """The push deadline in seconds: SST_VAULT_PUSH_TIMEOUT, else the default (10 minutes)."""
    raw = (os.environ if env is None else env).get(ENV_PUSH_TIMEOUT, "")
    if not raw.strip():
        return DEFAULT_PUSH_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise UsageError(
            f"{ENV_PUSH_TIMEOUT}={printable(raw, 40)} is not a number of seconds",
            f"unset it or set e.g. {ENV_PUSH_TIMEOUT}=600",
        )
    return value


@dataclass
class GitResult:
    code: int
    out: str
    err: str

    @property
    def reason(self) -> str:
        """Why git failed, on one escaped line, for one-line errors.

        The fatal:/error: line first, with the lines that continue it: git says "unable to
        connect to host:" and puts "errno=Connection refused" on the next line.
        """
        lines = [ln.strip() for ln in self.err.splitlines() if ln.strip()]
        for i, line in enumerate(lines):
            if line.startswith(("fatal:", "error:")):
                parts = [line.split(":", 1)[1].strip()]
                for more in lines[i + 1 :]:
                    if more.startswith(("fatal:", "error:", "hint:", "remote:", "To ")):
                        break
                    parts.append(more)
                return printable(" ".join(parts))
        return printable(lines[-1]) if lines else f"exit status {self.code}"


@dataclass
class PushResult:
    branch: str
    remote: str
    head: str = ""
    rebased: int = 0
    attempts: int = 0


@dataclass
class Rejection:
    """One push that did not land: git's flag for the ref (None: no ref line) and why."""

    flag: str | None
    reason: str
    said: str = ""  # what the remote itself printed (a hook's message), escaped

    @property
    def transient(self) -> bool:
        return any(word in self.reason for word in TRANSIENT)


def porcelain_status(out: str, ref: str) -> str | None:
    """The flag `git push --porcelain` printed for `ref` (" ", "*", "=", "!", "+", "-")."""
    for line in out.splitlines():
        flag, _, rest = line.partition("\t")
        if len(flag) == 1 and rest.split("\t", 1)[0].endswith(f":{ref}"):
            return flag
    return None


def porcelain_reason(out: str) -> str:
    for line in out.splitlines():
        if line.startswith("!\t"):
            return line.split("\t")[-1].strip()
    return "rejected"


def _verb(args: tuple[str, ...]) -> str:
    """The git subcommand among `args` ("commit" in `-c x=y commit …`), for messages."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in ("-c", "-C") else rest[1:]
    return rest[0] if rest else (args[0] if args else "")


class GitStore:
    """The git repository that holds a project's vault files."""

    def __init__(self, project: Path) -> None:
        import git

        try:
            self.repo: git.Repo = git.Repo(project, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise ConfigError(
                f"{project} is not inside a git repository", "run `git init` there first"
            ) from None
        if self.repo.bare or self.repo.working_tree_dir is None:
            raise ConfigError(f"{project}: the repository is bare", "use a clone with a work tree")
        self.top = Path(self.repo.working_tree_dir).resolve()

    def relative(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.top).as_posix()
        except ValueError:
            raise ConfigError(f"{path} is outside the repository {self.top}") from None

    @property
    def git_dir(self) -> Path:
        return Path(self.repo.git_dir)

    def _run(self, *args: str, **kwargs: object) -> str:
        import git

        try:
            return self.repo.git.execute(  # type: ignore[call-overload]
                ["git", *args], env={**git_env(), **self._env()}, **kwargs
            )  # type: ignore[call-overload]
        except git.GitCommandError as exc:
            locked = known_git_failure(f"{exc.stderr}\n{exc.stdout}", self.git_dir)
            if locked is not None:
                raise locked from None
            detail = (exc.stderr or exc.stdout or "").strip().splitlines()
            last = detail[-1].strip() if detail else str(exc.status)
            raise GitError(
                f"git {_verb(args)} failed: {last.removeprefix('stderr: ').strip(chr(39))}"
            ) from None

    def _env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if not self._has_identity():
            env.update(
                GIT_AUTHOR_NAME=FALLBACK_NAME,
                GIT_AUTHOR_EMAIL=FALLBACK_EMAIL,
                GIT_COMMITTER_NAME=FALLBACK_NAME,
                GIT_COMMITTER_EMAIL=FALLBACK_EMAIL,
            )
        return env

    def _has_identity(self) -> bool:
        if getattr(self, "_identity", None) is None:
            # Ask git itself: GitPython's config reader misses GIT_CONFIG_GLOBAL and includeIf.
            name = self._config("user.name") or os.environ.get("GIT_AUTHOR_NAME")
            email = self._config("user.email") or os.environ.get("GIT_AUTHOR_EMAIL")
            self._identity = bool(name and email)
        return bool(self._identity)

    def _config(self, key: str) -> str:
        import git

        try:
            return str(self.repo.git.config("--get", key)).strip()
        except git.GitCommandError:
            return ""

    def commit_paths(self, paths: Iterable[Path], message: str) -> str | None:
        """Stage and commit exactly `paths` (other staged work stays staged, uncommitted).

        Returns the new commit id, or None when these paths do not differ from HEAD.
        """
        rel = sorted({self.relative(p) for p in paths})
        if not rel:
            return None
        present = [r for r in rel if (self.top / r).exists()]
        # Only a missing path needs ls-files: it is a candidate when tracked (a deletion).
        tracked = (
            set(self._run("ls-files", "--", *rel).splitlines()) if len(present) < len(rel) else ()
        )
        candidates = [r for r in rel if r in tracked or r in present]
        if not candidates:
            return None  # an empty pathspec would mean every staged path
        # Ciphertext does not compress: storing it uncompressed saves most of `git add`. A
        # tracked path that is gone is staged as a deletion (`add` of a removed file does that).
        self._run("-c", "core.loosecompression=0", "add", "--", *candidates)
        changed = self._run("diff", "--cached", "--name-only", "--", *candidates).splitlines()
        if not changed:
            return None
        # --only: commit these paths alone, whatever else the user has staged. The blobs are
        # already stored by `add` above, so commit only writes trees and the commit object.
        self._run("commit", "--quiet", "--no-verify", "--only", "-m", message, "--", *changed)
        from git.refs.symbolic import SymbolicReference

        # Read from the ref files: `head.commit` would start a `git cat-file` to type the id.
        return str(SymbolicReference.dereference_recursive(self.repo, "HEAD"))

    def current_branch(self) -> str:
        try:
            return self.repo.active_branch.name
        except TypeError:
            raise GitError(
                "HEAD is detached", "check out a branch before committing state"
            ) from None

    def push(
        self, remote: str = "origin", protect: Iterable[str] = (), timeout: float | None = None
    ) -> PushResult:
        """Push the current branch; when the remote moved, rebase and retry, never force.

        `protect` lists repo-relative paths (a stage's vault files) whose change on the remote
        means two writers diverged: then nothing is rebased and `DivergedError` keeps the local
        commit. Files the local commits change are always protected as well. Retries go on
        until `timeout` seconds (default `push_timeout()`), then `PushTimeoutError`; a refusal
        for good is `PushRefusedError`, an unreachable remote `UnreachableError`.
        """
        branch = self.current_branch()
        self.require_remote(remote)
        limit = push_timeout() if timeout is None else timeout
        deadline = time.monotonic() + limit
        result = PushResult(branch=branch, remote=remote)
        delay = PUSH_FIRST_DELAY
        hung_up = 0
        while True:
            result.attempts += 1
            rejected = self._push_branch(remote, branch)
            if rejected is None:
                result.head = self.head()
                return result
            # Whatever git's wording, ask the remote whether its branch moved.
            try:
                remote_sha = self.fetch_branch(remote, branch)
            except UnreachableError:
                raise UnreachableError(
                    f"git push to {remote} failed: {rejected.reason}",
                    f"the state is committed locally as {self.head()[:12]} on {branch} in "
                    f"{self.top}; push it with `git push {remote} {branch}` once {remote} is "
                    "reachable",
                ) from None
            if remote_sha is not None and not self.contains(remote_sha):
                action = self.integrate(remote_sha, protect, remote=remote, branch=branch)
                if action == "rebased":
                    result.rebased += 1
            elif rejected.flag == "!" and not rejected.transient:
                raise self._refused(remote, branch, rejected)
            elif rejected.flag is None and not rejected.transient:
                hung_up += 1  # reachable for fetch, yet the push itself broke off
                if hung_up > 2:
                    raise GitError(
                        f"git push to {remote} failed: {rejected.reason}",
                        f"the state is committed locally as {self.head()[:12]} on {branch} in "
                        f"{self.top}; push it with `git push {remote} {branch}`",
                    )
            left = deadline - time.monotonic()
            if left <= 0:
                raise PushTimeoutError(
                    f"git push to {remote} was still rejected after {limit:g}s and "
                    f"{result.attempts} attempts (others keep pushing to {branch}; "
                    f"last: {rejected.reason})",
                    f"the state is committed locally as {self.head()[:12]}: retry "
                    f"`git pull --rebase {remote} {branch} && git push {remote} {branch}`, "
                    f"or allow more time with --push-timeout / {ENV_PUSH_TIMEOUT}",
                )
            time.sleep(min(left, random.uniform(0, delay)))
            delay = min(PUSH_MAX_DELAY, delay * PUSH_BACKOFF)

    def _refused(self, remote: str, branch: str, rejected: Rejection) -> PushRefusedError:
        where = f"the state is committed locally as {self.head()[:12]} on {branch}"
        if "hook declined" in rejected.reason:
            said = f": {rejected.said}" if rejected.said else ""
            return PushRefusedError(
                f"{remote} declined the push to {branch}: a server-side hook refused it "
                f"({rejected.reason}){said}",
                f"{where}; ask the repository's admins about that hook (or branch protection), "
                f"then `git push {remote} {branch}`",
            )
        return PushRefusedError(
            f"{remote} refused the push to {branch}: {rejected.reason}"
            + (f" ({rejected.said})" if rejected.said else ""),
            f"{where}; check the branch's protection rules and your rights on {remote}, "
            f"then `git push {remote} {branch}`",
        )

    def contains(self, sha: str) -> bool:
        """True when commit `sha` is HEAD or one of its ancestors."""
        return self.git("merge-base", "--is-ancestor", sha, "HEAD", check=False).code == 0

    # --- remote plumbing for push, pull and the deploy lock ---------------------------------

    def git(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> GitResult:
        """Run git in the work tree without the secret key in its environment."""
        full_env = git_env()
        full_env.update(self._env())
        full_env.update(env or {})
        env = full_env
        # A CI job must fail, not hang, when a remote asks for credentials.
        env.setdefault("GIT_TERMINAL_PROMPT", "0")
        proc = subprocess.run(
            ["git", *args],
            cwd=self.top,
            env=env,
            input=input,
            capture_output=True,
            text=True,
            errors="replace",  # a foreign ref or message need not be UTF-8
        )
        result = GitResult(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise known_git_failure(proc.stderr, self.git_dir) or GitError(
                f"git {_verb(args)} failed: {result.reason}"
            )
        return result

    def has_remote(self, name: str) -> bool:
        return self.git("remote", check=False).out.split().count(name) > 0

    def require_remote(self, name: str) -> None:
        if not self.has_remote(name):
            raise GitError(
                f"no remote named {name!r}",
                "add one with `git remote add`, or set `remote` in sst-vault.toml",
            )

    def unpushed(self, remote: str, branch: str) -> int:
        """Commits on HEAD that the last fetch did not see on <remote>/<branch>."""
        tracking = f"refs/remotes/{remote}/{branch}"
        if self.git("rev-parse", "--verify", "-q", tracking, check=False).code != 0:
            return 1  # the branch was never fetched or pushed: push it
        return int(self.git("rev-list", "--count", f"{tracking}..HEAD").out.strip() or 0)

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").out.strip()

    def ls_remote(self, remote: str, ref: str) -> str | None:
        """The remote's current value of `ref`, or None when it does not exist there."""
        result = self.git("ls-remote", "--refs", remote, ref, check=False)
        if result.code != 0:
            raise UnreachableError(f"cannot reach remote {remote!r}: {result.reason}", REACH_HINT)
        for line in result.out.splitlines():
            sha, _, name = line.partition("\t")
            if name == ref:
                return sha
        return None

    def fetch_branch(self, remote: str, branch: str) -> str | None:
        """Fetch `branch` into refs/remotes/<remote>/<branch>; None when the remote lacks it."""
        tracking = f"refs/remotes/{remote}/{branch}"
        refspec = f"+refs/heads/{branch}:{tracking}"
        result = self.git("fetch", "--quiet", "--no-tags", remote, refspec, check=False)
        if result.code != 0:
            if "couldn't find remote ref" in result.err:
                return None
            raise UnreachableError(f"git fetch from {remote} failed: {result.reason}", REACH_HINT)
        return self.git("rev-parse", "--verify", "-q", tracking).out.strip()

    def pull(self, remote: str, protect: Iterable[str] = ()) -> str:
        """Fetch the current branch and fast-forward (or rebase, see `integrate`) onto it."""
        branch = self.current_branch()
        remote_sha = self.fetch_branch(remote, branch)
        if remote_sha is None:
            return "no remote branch"
        return self.integrate(remote_sha, protect, remote=remote, branch=branch)

    def integrate(
        self, remote_sha: str, protect: Iterable[str], *, remote: str, branch: str
    ) -> str:
        """Bring `remote_sha` into the current branch without losing a local commit.

        Returns "up to date", "fast-forward" or "rebased"; raises DivergedError when the
        remote changed a protected path (or one the local commits changed) and leaves
        everything as it was.
        """
        head = self.head()
        if self.git("merge-base", "--is-ancestor", remote_sha, head, check=False).code == 0:
            return "up to date"
        if self.git("merge-base", "--is-ancestor", head, remote_sha, check=False).code == 0:
            self.git("merge", "--ff-only", "--quiet", remote_sha)
            return "fast-forward"
        base = self.git("merge-base", head, remote_sha, check=False).out.strip()
        if not base:
            raise DivergedError(
                f"{remote}/{branch} shares no history with the local {branch}",
                "check that `remote` in sst-vault.toml names the right repository",
            )
        local = set(self._changed(base, head))
        theirs = set(self._changed(base, remote_sha))
        clash = sorted(theirs & (local | set(protect)))
        if clash:
            who = self.git(
                "log", "-1", "--format=%h by %an (%s)", f"{base}..{remote_sha}", "--", *clash
            ).out.strip()
            raise DivergedError(
                f"{remote}/{branch} changed {clash[0]} too (commit {who}): two writers diverged, "
                f"so nothing was rebased or pushed",
                f"your commit {head[:12]} is kept on the local {branch}; compare both states "
                f"(`sst-vault status`), keep one with `git rebase {remote}/{branch}`, "
                "then refresh with `sst refresh`",
            )
        result = self.git("rebase", "--autostash", "--quiet", remote_sha, check=False)
        if result.code != 0:
            self.git("rebase", "--abort", check=False)
            raise DivergedError(
                f"rebasing {branch} onto {remote}/{branch} failed: {result.reason}",
                f"your commit {head[:12]} is kept; rebase by hand, then push",
            )
        return "rebased"

    def _changed(self, old: str, new: str) -> list[str]:
        out = self.git("diff", "--name-only", "-z", "--no-renames", old, new).out
        return [p for p in out.split("\0") if p]

    def _push_branch(self, remote: str, branch: str) -> Rejection | None:
        """Push HEAD to the branch: None when it landed, else what stopped it."""
        ref = f"refs/heads/{branch}"
        result = self.git("push", "--porcelain", remote, f"HEAD:{ref}", check=False)
        status = porcelain_status(result.out, ref)
        if result.code == 0 and status in (" ", "*", "=", "+"):
            return None
        if status == "!":
            reason = printable(porcelain_reason(result.out))
            return Rejection("!", reason, remote_lines(result.err))
        said = remote_lines(result.err)
        reason = result.reason
        if any(word in result.err for word in TRANSIENT):
            reason = next(
                (
                    printable(ln.strip())
                    for ln in result.err.splitlines()
                    if any(w in ln for w in TRANSIENT)
                ),
                reason,
            )
        return Rejection(status, reason, said)

    def show(self, rev: str, path: Path) -> bytes | None:
        """The bytes of `path` at `rev`, or None when it did not exist there."""
        import git

        try:
            blob = self.repo.commit(rev).tree / self.relative(path)
        except (KeyError, ValueError, git.BadName):
            return None
        return blob.data_stream.read()
