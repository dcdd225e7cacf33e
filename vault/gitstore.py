"""Where vault files are stored, and the one way sst-vault runs git.

Storage: the current branch of the project's git repository. This is the one seam for the
storage location (DESIGN.md: a later mode keeps vault files on a dedicated state branch). It
stages exactly the paths it is given and never runs `git add .`.

Running git: every git process in `vault/` is started by `run_git` (or `iter_blobs`, which
streams through `git cat-file --batch` on the same launcher), with one environment policy,
`git_env()`: no `SST_VAULT_KEY*` variable (the key was already taken out of this process's
environment when the CLI started, `vault.keyenv.take_environment`; this is the second wall),
`GIT_TERMINAL_PROMPT=0` (a CI job fails instead of hanging on a credential prompt), and for the
commands that write commits a fallback identity when git has none (a bare CI runner). One error
mapping, `git_failure`, turns a failed command into one `GitError` line that names the git
command and git's own reason (escaped: it may quote a remote or a hook), or into the message
for a failure the user fixes outside git (a stale lock file, a full disk).

Plain subprocess, no GitPython, for every job: `import git` costs 130-180 ms, more than the
whole `--help` and `prepare` budgets (DESIGN.md's performance goals), and each of GitPython's
paths (`execute`, its object database, its config reader) would need its own environment and
error policy. Repository discovery is one `git rev-parse`; reading a blob is `git cat-file`;
history reads stream many blobs through one `cat-file --batch`.

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
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from vault import threads
from vault.errors import ConfigError, GitError, RefusedError, ResourceError, UsageError
from vault.printable import printable, remote_lines

# Commits made by sst-vault when the user has no git identity (a bare CI runner).
FALLBACK_NAME = "sst-vault"
FALLBACK_EMAIL = "sst-vault@localhost"
IDENTITY_VARS = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL")
# The git commands that write a commit object, so need an identity (merge: a non-ff merge;
# rebase --autostash and stash: the stash commit). Only these pay for the identity check.
IDENTITY_VERBS = frozenset(
    {"commit", "commit-tree", "cherry-pick", "rebase", "merge", "revert", "stash", "am", "tag"}
)
SECRET_PREFIX = "SST_VAULT_KEY"  # SST_VAULT_KEY, SST_VAULT_KEY_FILE, SST_VAULT_KEY_ID
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
# A merge, cherry-pick or revert in progress: a plain `git commit` would conclude it.
IN_PROGRESS = ("MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD")
TEMP_INDEX = "sst-vault-index-"  # + pid: the index copy a commit is made from, in the git dir
REACH_HINT = "check the network and your git credentials for that remote, then retry"


# --- the runner: one environment, one launcher, one error mapping -------------------------


class GitNotFoundError(ConfigError):
    """No `git` executable on PATH."""


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every git child (and of what git starts: hooks, the diff driver):
    this process's environment and `extra`, never an sst-vault secret, never a prompt."""
    env = {**os.environ, **(extra or {})}
    for name in [k for k in env if k.startswith(SECRET_PREFIX)]:
        del env[name]
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def _verb(args: Iterable[str]) -> str:
    """The git subcommand among `args` ("commit" in `-c x=y commit …`), for messages."""
    rest = list(args)
    first = rest[0] if rest else ""
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in ("-c", "-C") else rest[1:]
    return rest[0] if rest else first


def _launch(
    cwd: Path | str, args: tuple[str, ...], env: Mapping[str, str] | None, **popen: object
) -> subprocess.Popen[bytes]:
    """Start `git ARGS` in `cwd` under the environment policy: the one place git is started."""
    extra = dict(env or {})
    if _verb(args) in IDENTITY_VERBS and not all(v in extra for v in IDENTITY_VARS):
        extra = {**fallback_identity(cwd), **extra}
    # core.quotePath=false: paths come back as their UTF-8 bytes, not C-quoted octal escapes
    # (a state_dir like "infra/état" must match itself; check_state_dir refuses the characters
    # git quotes even so).
    command = ["git", "-c", "core.quotePath=false", *args]
    try:
        return subprocess.Popen(command, cwd=cwd, env=git_env(extra), **popen)  # type: ignore[call-overload]
    except FileNotFoundError as exc:
        if exc.filename == "git" or Path(cwd).is_dir():
            raise GitNotFoundError(
                "git is not installed (no `git` on PATH)", "install git, then retry"
            ) from None
        raise


@dataclass
class GitResult:
    """What one git command did: exit code, stdout as bytes, stderr as text."""

    code: int
    stdout: bytes
    err: str
    args: tuple[str, ...] = ()

    @cached_property
    def out(self) -> str:
        """stdout as text: a foreign ref or message need not be UTF-8."""
        return self.stdout.decode(errors="replace")

    @property
    def verb(self) -> str:
        return _verb(self.args)

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
        said = [ln for ln in lines if not ln.startswith(("hint:", "warning:"))]
        if said:
            return printable(said[0])
        return printable(lines[-1]) if lines else f"exit status {self.code}"

    @property
    def said(self) -> str:
        """What something other than git printed before git's own fatal:/error: line (a hook's
        message), escaped, on one line; "" when nothing did."""
        lines = [ln.strip() for ln in self.err.splitlines() if ln.strip()]
        own = ("fatal:", "error:", "hint:", "warning:", "remote:", "To ")
        if not any(ln.startswith(("fatal:", "error:")) for ln in lines):
            return ""
        first = next(i for i, ln in enumerate(lines) if ln.startswith(("fatal:", "error:")))
        return printable(" / ".join(ln for ln in lines[:first] if not ln.startswith(own)))


def git_failure(result: GitResult, where: Path | str) -> GitError:
    """The one error for a git command that failed: the command and git's own reason, or the
    message for a failure fixed outside git (a lock file in the way, a full disk)."""
    known = known_git_failure(f"{result.err}\n{result.out}", where)
    if known is not None:
        return known
    said = f" ({result.said})" if result.said else ""
    return GitError(f"git {result.verb} failed: {result.reason}{said}")


def run_git(
    cwd: Path | str,
    *args: str,
    input: bytes | str | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    where: Path | str | None = None,
) -> GitResult:
    """Run `git ARGS` in `cwd` and wait; `git_failure` (naming `where`) when `check` fails."""
    data = input.encode() if isinstance(input, str) else input
    stdin = subprocess.DEVNULL if data is None else subprocess.PIPE
    proc = _launch(cwd, args, env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with proc:
        try:
            out, err = proc.communicate(data)
        except BaseException:  # as subprocess.run: an interrupt does not wait for git
            proc.kill()
            raise
    result = GitResult(proc.returncode, out, err.decode(errors="replace"), args)
    if check and result.code != 0:
        raise git_failure(result, where or cwd)
    return result


def shared_ancestors(top: Path, commits: Iterable[str]) -> set[str]:
    """The commits that are proper ancestors of every one of `commits` (empty for none).

    One `git rev-list --topo-order --parents` over their history (children before parents),
    handing each parent a bit mask of the given commits it lies under: one pass, however many
    commits are given.
    """
    commits = sorted(set(commits))
    if not commits:
        return set()
    bit = {commit: 1 << n for n, commit in enumerate(commits)}
    every = (1 << len(commits)) - 1
    under: dict[str, int] = {}
    listing = run_git(top, "rev-list", "--topo-order", "--parents", *commits, "--").out
    for line in listing.splitlines():
        commit, *parents = line.split()
        mask = under.get(commit, 0) | bit.get(commit, 0)
        for parent in parents:
            under[parent] = under.get(parent, 0) | mask
    return {commit for commit, mask in under.items() if mask == every}


def fallback_identity(cwd: Path | str) -> dict[str, str]:
    """{} when git has a user name and email for `cwd`, else the sst-vault identity.

    Asks git itself (includes, `includeIf`, GIT_CONFIG_GLOBAL all count), plus GIT_AUTHOR_NAME
    and GIT_AUTHOR_EMAIL from the environment, as the commit would.
    """
    got = run_git(cwd, "config", "--get-regexp", r"^user\.(name|email)$", check=False)
    found: dict[str, str] = {}
    for line in got.out.splitlines():
        key, _, value = line.partition(" ")
        found[key.lower()] = value.strip()
    name = found.get("user.name") or os.environ.get("GIT_AUTHOR_NAME")
    email = found.get("user.email") or os.environ.get("GIT_AUTHOR_EMAIL")
    if name and email:
        return {}
    return {
        "GIT_AUTHOR_NAME": FALLBACK_NAME,
        "GIT_AUTHOR_EMAIL": FALLBACK_EMAIL,
        "GIT_COMMITTER_NAME": FALLBACK_NAME,
        "GIT_COMMITTER_EMAIL": FALLBACK_EMAIL,
    }


def resolve_commit(top: Path, rev: str) -> str:
    """The full commit id of `rev`, or a usage error naming it."""
    if not rev or rev.startswith("-"):
        raise UsageError(f"invalid revision {rev!r}", "give a commit, branch or tag")
    proc = run_git(top, "rev-parse", "--verify", "-q", f"{rev}^{{commit}}", check=False)
    if proc.code != 0:
        raise UsageError(
            f"unknown revision {rev!r}", "see `sst-vault log STAGE` or `git log` for commits"
        )
    return proc.out.strip()


def show_blob(top: Path, commit: str, rel: str) -> bytes | None:
    """The bytes of `rel` in `commit`, or None when it was not there."""
    proc = run_git(top, "cat-file", "blob", f"{commit}:{rel}", check=False)
    return proc.stdout if proc.code == 0 else None


def iter_blobs(
    top: Path, shas: Iterable[str], head: int | None = None
) -> Iterator[tuple[str, bytes | None]]:
    """Stream blobs through one `git cat-file --batch`, one in memory at a time.

    With `head`, only each blob's first `head` bytes are kept (the rest is read and dropped).
    """
    wanted = list(dict.fromkeys(shas))
    if not wanted:
        return
    proc = _launch(
        top,
        ("cat-file", "--batch"),
        None,
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

    writer = threading.Thread(target=feed, name="sst-vault-feed", daemon=True)
    try:
        try:
            threads.start(writer)
        except ResourceError:
            proc.stdin.close()  # git reads to the end of its input, then exits
            raise
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
        if writer.ident is not None:  # started
            writer.join()


# What git prints when a lock file is in its way ("Unable to create '…/index.lock': File exists").
_LOCK_RE = re.compile(r"Unable to create '([^']+\.lock)': File exists")


def lock_file_error(path: Path | str) -> GitError:
    """The one message for a git lock file in the way: which file, and how to recover."""
    import shlex  # here, not at the top: startup time

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


def diverged(theirs: str, path: str, who: str, outcome: str, hint: str) -> DivergedError:
    """The one message for two writers of one stage's state (a push, a rescued state landing):
    which side changed which file in which commit, and what was therefore not done."""
    return DivergedError(
        f"{theirs} changed {printable(path)} too (commit {printable(who)}): "
        f"two writers diverged, {outcome}",
        hint,
    )


class KeysChangedError(DivergedError):
    """The remote changed the vault's key record or wrapped data key under local commits that
    carry state: they were sealed under the data key before, which a removal may have retired,
    so they are never rebased onto it (nor pushed anywhere). Seal again under the new key."""


def unrelated(theirs: str, ours: str) -> DivergedError:
    """Two histories with no common commit: most likely the wrong remote."""
    return DivergedError(
        f"{theirs} shares no history with {ours}",
        "check that `remote` in sst-vault.toml names the right repository",
    )


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
class PushResult:
    """Where a push landed: the branch and remote, the commit pushed, and how many rebases
    and attempts a moving remote took."""

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


class GitStore:
    """The git repository that holds a project's vault files."""

    def __init__(self, project: Path) -> None:
        self.top, self.git_dir = _discover(project)

    def relative(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.top).as_posix()
        except ValueError:
            raise ConfigError(f"{path} is outside the repository {self.top}") from None

    def stage_paths(self, paths: Iterable[Path]) -> list[str]:
        """Stage exactly `paths` in git's index, in one `git add`; the repo-relative ones staged.

        A tracked path that is gone is staged as a deletion (`add` of a removed file does that);
        a path neither present nor tracked is left out (an empty pathspec would mean everything).
        """
        rel = sorted({self.relative(p) for p in paths})
        present = [r for r in rel if (self.top / r).exists()]
        # Only a missing path needs ls-files: it is a candidate when tracked (a deletion).
        tracked = (
            set(self.git("ls-files", "--", *rel).out.splitlines())
            if len(present) < len(rel)
            else ()
        )
        candidates = [r for r in rel if r in tracked or r in present]
        if candidates:
            # Ciphertext does not compress: storing it uncompressed saves most of `git add`.
            self.git("-c", "core.loosecompression=0", "add", "--", *candidates)
        return candidates

    def store_ahead(self, path: Path, as_path: Path) -> subprocess.Popen[bytes] | None:
        """Start storing `path`'s bytes as the blob that `git add` of `as_path` will store.

        `commit` seals a vault file beside its place and reads it back to verify it; git
        writes the blob meanwhile, on another core, and the `git add` after the swap finds it
        stored (it still hashes the file: the index needs its stat data). Best effort: a
        failure here is `git add`'s to report. The caller waits for it or kills it.
        """
        try:
            return _launch(
                self.top,
                (
                    "-c",
                    "core.loosecompression=0",
                    "hash-object",
                    "-w",
                    "--path",
                    self.relative(as_path),
                    "--",
                    str(path),
                ),
                None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except (OSError, ConfigError):
            return None

    def commit_paths(self, paths: Iterable[Path], message: str) -> str | None:
        """Stage and commit exactly `paths` (other staged work stays staged, uncommitted).

        Returns the new commit id, or None when these paths do not differ from HEAD.
        """
        candidates = self.stage_paths(paths)
        if not candidates:
            return None
        # What the whole index changes against HEAD: ours, and what the user staged besides.
        staged = self.git("diff", "--cached", "--name-only", "-z", "--no-renames", check=False)
        if staged.code != 0:  # no HEAD yet: git's partial commit handles the first commit
            staged = self.git("diff", "--cached", "--name-only", "-z", "--", *candidates)
        names = [n for n in staged.out.split("\0") if n]
        ours = set(candidates)
        changed = [n for n in names if n in ours]
        if not changed:
            return None
        if not self._commit_alone(message, [n for n in names if n not in ours]):
            # --only: these paths alone, whatever else the user has staged; it hashes them again.
            self.git("commit", "--quiet", "--no-verify", "--only", "-m", message, "--", *changed)
        return self.head()

    def _commit_alone(self, message: str, others: list[str]) -> bool:
        """Commit the index as `git add` left it, minus the `others` the user staged, in one plain
        `git commit` on a copy of the index; False where that cannot be done (then nothing was).

        What `git commit --only` does, without hashing the freshly added files a second time
        (its temporary index starts from HEAD, with no stat data to trust): the copy keeps the
        stat data of the real index. The copy lives in the git directory for the commit only;
        hooks and signing are git commit's own, as with --only. Not during a merge, cherry-pick
        or revert (a plain commit would conclude it; --only refuses with git's own message), and
        not before the first commit.
        """
        if any((self.git_dir / name).exists() for name in IN_PROGRESS):
            return False
        if self.git("rev-parse", "--verify", "-q", "HEAD^{commit}", check=False).code != 0:
            return False
        index = self.top / self.git("rev-parse", "--git-path", "index").out.rstrip("\n")
        for stale in self.git_dir.glob(f"{TEMP_INDEX}*"):  # of a commit killed half-way
            stale.unlink(missing_ok=True)
        temp = self.git_dir / f"{TEMP_INDEX}{os.getpid()}"
        try:
            import shutil  # here, not at the top: only commits need it (startup time)

            shutil.copyfile(index, temp)
        except FileNotFoundError:
            return False
        try:
            env = {"GIT_INDEX_FILE": str(temp)}
            if others:  # back to HEAD's version in the copy, staged as they were in the index
                self.git(
                    "--literal-pathspecs",
                    "reset",
                    "-q",
                    "HEAD",
                    "--pathspec-from-file=-",
                    "--pathspec-file-nul",
                    input="\0".join(others),
                    env=env,
                )
            self.git("commit", "--quiet", "--no-verify", "-m", message, env=env)
        finally:
            temp.unlink(missing_ok=True)
        return True

    def current_branch(self) -> str:
        ref = self.git("symbolic-ref", "--quiet", "HEAD", check=False)
        if ref.code != 0 or not ref.out.strip():
            raise GitError("HEAD is detached", "check out a branch before committing state")
        return ref.out.strip().removeprefix("refs/heads/")

    def push(
        self,
        remote: str = "origin",
        protect: Iterable[str] = (),
        timeout: float | None = None,
        *,
        keys: Iterable[str] = (),
        retired: Callable[[str, str], bool] | None = None,
        whole: Iterable[str] = (),
    ) -> PushResult:
        """Push the current branch; when the remote moved, rebase and retry, never force.

        `protect` lists repo-relative paths (a stage's vault files) whose change on the remote
        means two writers diverged: then nothing is rebased and `DivergedError` keeps the local
        commit. Files the local commits change are always protected as well. `keys` lists the
        vault's key record and wrapped data key, for a push of sealed state: their change on
        the remote is `KeysChangedError` (see `integrate`) when `retired(base, remote_sha)`
        says the data key changed (None: any change counts). `whole` lists folders any change of
        which on the remote means divergence (a rotation re-sealed every file in it, and a file
        added meanwhile would stay under the data key before). Retries go on
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
                action = self.integrate(
                    remote_sha,
                    protect,
                    remote=remote,
                    branch=branch,
                    keys=keys,
                    retired=retired,
                    whole=whole,
                )
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
            import random  # here, not at the top: only a lost push race needs it

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
        """`run_git` in the work tree (a lock file or a full disk named in `git_dir`)."""
        return run_git(self.top, *args, input=input, check=check, env=env, where=self.git_dir)

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
        self,
        remote_sha: str,
        protect: Iterable[str],
        *,
        remote: str,
        branch: str,
        keys: Iterable[str] = (),
        retired: Callable[[str, str], bool] | None = None,
        whole: Iterable[str] = (),
    ) -> str:
        """Bring `remote_sha` into the current branch without losing a local commit.

        Returns "up to date", "fast-forward" or "rebased"; raises DivergedError when the
        remote changed a protected path (or one the local commits changed) and leaves
        everything as it was. KeysChangedError when it changed one of `keys` (the vault's key
        record and wrapped data key) and `retired(base, remote_sha)` (a new data key, not a
        recipient added): local commits of state sealed under the data key before a removal
        must not land after it, where the removed member could read them.
        """
        head = self.head()
        if self.git("merge-base", "--is-ancestor", remote_sha, head, check=False).code == 0:
            return "up to date"
        if self.git("merge-base", "--is-ancestor", head, remote_sha, check=False).code == 0:
            self.git("merge", "--ff-only", "--quiet", remote_sha)
            return "fast-forward"
        base = self.git("merge-base", head, remote_sha, check=False).out.strip()
        if not base:
            raise unrelated(f"{remote}/{branch}", f"the local {branch}")
        local = set(self._changed(base, head))
        theirs = set(self._changed(base, remote_sha))
        rekeyed = sorted(theirs & set(keys))
        if rekeyed and (retired is None or retired(base, remote_sha)):
            raise KeysChangedError(
                f"{remote}/{branch} changed the vault's keys (commit "
                f"{printable(self.last_commit(f'{base}..{remote_sha}', rekeyed))}): the local "
                "commits hold state sealed under the data key before, so nothing was rebased or"
                " pushed",
                f"your commit {head[:12]} stays on the local {branch}; drop it with `git reset"
                f" --keep {head[:12]}~1`, `git pull`, then commit the state again",
            )
        folders = tuple(f"{folder.rstrip('/')}/" for folder in whole)
        inside = {path for path in theirs if path.startswith(folders)}
        clash = sorted(theirs & (local | set(protect)) | inside)
        if clash:
            raise diverged(
                f"{remote}/{branch}",
                clash[0],
                self.last_commit(f"{base}..{remote_sha}", clash),
                "so nothing was rebased or pushed",
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

    def last_commit(self, span: str, paths: Iterable[str]) -> str:
        """The newest commit in `span` touching `paths`: "<short id> by <author> (<subject>)"."""
        return self.git("log", "-1", "--format=%h by %an (%s)", span, "--", *paths).out.strip()

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
        return show_blob(self.top, rev, self.relative(path))


def _discover(project: Path) -> tuple[Path, Path]:
    """The work tree's top and the git directory of the repository around `project`."""
    outside = ConfigError(f"{project} is not inside a git repository", "run `git init` there first")
    if not project.is_dir():
        raise outside
    found = run_git(
        project,
        "rev-parse",
        "--is-bare-repository",
        "--absolute-git-dir",
        "--show-toplevel",
        check=False,
    )
    lines = found.out.splitlines()
    if lines[:1] == ["true"]:
        raise ConfigError(f"{project}: the repository is bare", "use a clone with a work tree")
    if len(lines) == 2 and found.code != 0:
        raise ConfigError(
            f"{project} is inside a git directory, not a work tree", "use the work tree above it"
        )
    if found.code != 0 or len(lines) != 3:
        if "not a git repository" in found.err or not found.err.strip():
            raise outside
        raise git_failure(found, project)
    return Path(lines[2]).resolve(), Path(lines[1])
