"""`run`: the one CI step. Lock, pull, prepare, run the command, commit, push, unlock.

The recipe this replaces loses the state of a deploy that fails half way, because its commit
step never runs. Here the commit runs on every path on which the command ran (also when it
failed or was interrupted), and the deploy lock is released on every path. Signals reach the
command first; this process only finishes its own work (commit, push, release) afterwards.

Nothing deploys unobserved: if this process dies (even by SIGKILL), the command is stopped
too. On Linux the kernel sends it SIGTERM (PR_SET_PDEATHSIG); everywhere a small watchdog
process, in a session of its own, holds the read end of a pipe only we write to: when it reads
end-of-file instead of our "done" byte, it terminates the command's whole process group.

A state that cannot reach the branch (the remote changed this stage's files, a protection rule
or hook refuses it, the push deadline passed) is pushed to a rescue ref and the deploy lock is
kept, so nobody deploys from stale state until `sst-vault rescue land` puts it on the branch.

The secret key is read before anything is spawned (`Project.keys` removes SST_VAULT_KEY from
this process's environment) and the command's environment is built without it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vault.change import data_key_retired, key_paths
from vault.commit import commit
from vault.errors import (
    LIMIT_HINT,
    ConfigError,
    GitError,
    InvalidStateError,
    RefusedError,
    ResourceError,
    UsageError,
    VaultError,
    from_os_error,
)
from vault.gitstore import (
    DivergedError,
    GitStore,
    KeysChangedError,
    PushRefusedError,
    PushResult,
    PushTimeoutError,
    porcelain_status,
)
from vault.lock import (
    DEFAULT_TTL,
    DeployLock,
    LockBrokenError,
    LockInfo,
    rescue_root,
)
from vault.paths import KINDS, check_stage
from vault.prepare import prepare
from vault.printable import printable
from vault.project import Project
from vault.stagefiles import repo_lock

ENV_TIMINGS = "SST_VAULT_TIMINGS"  # "1": print how long each phase took, on stderr
# Seconds the command gets after SIGTERM, once sst-vault has died, before SIGKILL.
ORPHAN_GRACE = 10.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h

# The watchdog (run with `python -I -S -c`): argv = read fd, pid, "1" for a process group.
WATCHDOG = """\
import os, signal, sys, time
fd, pid, group, grace = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4])
signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    done = os.read(fd, 1)
except OSError:
    done = b""
if done:
    sys.exit(0)
send = (lambda s: os.killpg(pid, s)) if group else (lambda s: os.kill(pid, s))
try:
    send(signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        time.sleep(0.1)
        send(0)
    send(signal.SIGKILL)
except (ProcessLookupError, PermissionError):
    pass
"""


def in_ci(env: dict[str, str] | None = None) -> bool:
    """`CI` set to anything but empty/0/false: a CI runner, whose clone is thrown away."""
    value = (os.environ if env is None else env).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


class _Interrupted(BaseException):
    """SIGINT/SIGTERM before the command started: stop, release, exit 128+signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass
class Timings:
    enabled: bool = False
    start: float = field(default_factory=time.perf_counter)
    last: float = 0.0
    phases: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases.append((phase, now - (self.last or self.start)))
        self.last = now

    def report(self) -> str:
        parts = [f"{name}={seconds:.3f}" for name, seconds in self.phases]
        return "sst-vault timings: " + " ".join(parts) + f" total={self.last - self.start:.3f}"


class _Signals:
    """Forward SIGINT/SIGTERM to the command while it runs; stop cleanly before it starts."""

    def __init__(self, info: Callable[[str], None]) -> None:
        self.info = info
        self.child: subprocess.Popen[bytes] | None = None
        self.own_group = False
        self.after = False
        self.spawning = False
        self.pending: list[int] = []
        self.received: list[int] = []
        self._old: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()

    def _handle(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        if self.spawning:
            self.pending.append(signum)  # forwarded as soon as the child exists
            return
        child = self.child
        if child is not None and child.returncode is None:
            self._forward(child, signum)
            return
        if not self.after:
            raise _Interrupted(signum)
        if len(self.received) == 1:
            name = signal.Signals(signum).name
            self.info(f"sst-vault: got {name}; finishing the commit and the unlock first")

    def _forward(self, child: subprocess.Popen[bytes], signum: int) -> None:
        if len(self.received) == 1:
            name = signal.Signals(signum).name
            self.info(f"sst-vault: {name} passed to the command; its state will still be committed")
        try:
            if self.own_group:
                os.killpg(child.pid, signum)  # npx → node → sst: the whole group
            elif signum != signal.SIGINT:
                # Same process group as a terminal: Ctrl-C already reached the command.
                os.kill(child.pid, signum)
        except ProcessLookupError:
            pass

    def spawn(self, command: Sequence[str], env: dict[str, str]) -> int:
        # A terminal keeps the command in its foreground group (it may prompt); in CI it gets a
        # group of its own so a forwarded signal reaches its children too.
        self.own_group = hasattr(os, "killpg") and not _stdin_is_tty()  # POSIX only
        # Signals that arrive while the child is being created wait for it (a blocked signal
        # mask would be inherited by the child, so it is not used here).
        self.spawning = True
        try:
            self.child = subprocess.Popen(
                list(command),
                env=env,
                process_group=0 if self.own_group else None,
                preexec_fn=_die_with_parent(),
            )
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ENOMEM):  # fork refused: not the command's fault
                raise ResourceError(
                    f"cannot run {command[0]!r}: {exc.strerror or exc}", LIMIT_HINT
                ) from None
            raise UsageError(
                f"cannot run {command[0]!r}: {exc.strerror or exc}",
                "check the command (it runs without a shell; everything after the options, "
                "or after `--`, is the command)",
            ) from None
        finally:
            self.spawning = False
        watchdog = _Watchdog.start(self.child.pid, self.own_group)
        try:
            for signum in self.pending:
                self._forward(self.child, signum)
            code = self.child.wait()
        finally:
            watchdog.stand_down()
        self.after = True
        return 128 - code if code < 0 else code


def command_environment() -> dict[str, str]:
    """The command's environment: ours without any SST_VAULT_KEY* variable (the key, the key
    file's path, the internal pipe). Pins (SST_VAULT_PIN, SST_VAULT_KEY_ID) are not secret but
    go too: the command has no use for them."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SST_VAULT_KEY", "SST_VAULT_PIN", "SST_VAULT_REEXECED"))
    }


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the command when this process dies; else None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded before the fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # we died before the request took effect
            os._exit(128 + signal.SIGTERM)

    return preexec


class _Watchdog:
    """Stops the command's process group when this process dies without saying "done"."""

    def __init__(self, proc: subprocess.Popen[bytes] | None, fd: int | None) -> None:
        self.proc, self.fd = proc, fd

    @classmethod
    def start(cls, pid: int, group: bool) -> _Watchdog:
        if not hasattr(os, "killpg"):
            return cls(None, None)  # not POSIX: nothing to do it with
        read, write = os.pipe()  # both ends non-inheritable: only the watchdog gets `read`
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    "-c",
                    WATCHDOG,
                    str(read),
                    str(pid),
                    "1" if group else "0",
                    str(ORPHAN_GRACE),
                ],
                pass_fds=(read,),
                start_new_session=True,  # survives a kill of our own process group
                stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if k in ("PATH", "LD_LIBRARY_PATH")},
            )
        except OSError:
            os.close(write)
            return cls(None, None)  # the parent-death signal still covers the command itself
        finally:
            os.close(read)
        return cls(proc, write)

    def stand_down(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, b"x")
        os.close(self.fd)
        self.fd = None
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _stdin_is_tty() -> bool:
    try:
        return os.isatty(0)
    except OSError:
        return False


@dataclass
class RunResult:
    code: int
    commit: str | None = None
    pushed: bool = False
    timings: Timings | None = None


def run(
    project: Project,
    stage: str,
    command: Sequence[str],
    *,
    lock_timeout: float = 0,
    lock_ttl: int = DEFAULT_TTL,
    push: bool = True,
    use_lock: bool = True,
    push_timeout: float | None = None,
    info: Callable[[str], None] = lambda _msg: None,
) -> RunResult:
    """Run `command` for `stage` under the deploy lock; the result carries its exit code.

    In CI a missing remote is an error unless `push` and `use_lock` are both off: a runner
    must never deploy unguarded or leave the state in a clone about to be thrown away.
    """
    timings = Timings(enabled=os.environ.get(ENV_TIMINGS) == "1")
    stage = check_stage(stage)
    if not command:
        raise UsageError("no command given", "e.g. sst-vault run --stage dev npx sst deploy")
    project.keys  # noqa: B018 - read (and drop from the environment) before spawning anything
    store = GitStore(project.root)
    # Never deploy what could not be committed afterwards: an unmerged vault file of this
    # stage or a stale git lock file is refused before the lock is even taken.
    from vault.worktree import check_can_commit

    with repo_lock(project, store.git_dir):
        check_can_commit(project, [stage], "run")
    remote: str | None = project.config.remote
    if not store.has_remote(remote):
        if in_ci() and (push or use_lock):
            missing = [w for w, on in (("lock", use_lock), ("push", push)) if on]
            raise ConfigError(
                f"no git remote named {remote!r} in this repository (CI is set): `run` would "
                f"deploy {stage} without a deploy lock and without pushing its state",
                f"add the remote or fix `remote` in sst-vault.toml; to run without it on "
                f"purpose pass {' '.join('--no-' + w for w in missing)}",
            )
        if push:
            info(f"sst-vault: warning: no remote {remote!r}; the state is committed but not pushed")
        remote = None
    elif push:
        store.current_branch()  # a detached HEAD cannot be pushed: say so before deploying
    timings.mark("setup")
    job = _Run(project, stage, list(command), store, remote, push, info, timings)
    job.push_timeout = push_timeout
    job.signals.install()
    try:
        job.execute(use_lock, lock_timeout, lock_ttl)
    finally:
        job.signals.restore()
    timings.mark("unlock")
    if timings.enabled:
        print(timings.report(), file=sys.stderr)
    return job.result


class _Run:
    """One `run`: its steps, and the lock it must give back on every path."""

    def __init__(
        self,
        project: Project,
        stage: str,
        command: list[str],
        store: GitStore,
        remote: str | None,
        push: bool,
        info: Callable[[str], None],
        timings: Timings,
    ) -> None:
        self.project, self.stage, self.command = project, stage, command
        self.store, self.remote, self.push, self.info = store, remote, push, info
        self.timings = timings
        self.result = RunResult(code=0, timings=timings)
        self.signals = _Signals(info)
        self.lock: DeployLock | None = None
        self.held: LockInfo | None = None
        self.push_timeout: float | None = None
        # Set when the state did not reach the branch: the lock then stays held.
        self.keep_lock: str | None = None
        # Set while the commit was dropped to seal it again: HEAD is not the state's then.
        self.dropped = False

    def execute(self, use_lock: bool, lock_timeout: float, lock_ttl: int) -> None:
        try:
            self._steps(use_lock, lock_timeout, lock_ttl)
        except _Interrupted as exc:
            self.signals.after = True  # a second signal must not cut the cleanup short
            self._release(quiet=True)
            name = signal.Signals(exc.signum).name
            self.info(f"sst-vault: interrupted by {name} before the command ran")
            self.result.code = 128 + exc.signum
            return
        except VaultError as exc:
            ran = self.signals.child is not None
            self.signals.after = True
            if ran and self.result.code != 0:
                exc.exit_code = self.result.code  # the command's own failure stays visible
            self._release(quiet=True)
            raise
        except BaseException:
            self.signals.after = True
            self._release(quiet=True)
            raise
        try:
            self._release(quiet=False)
        except VaultError as exc:
            if self.result.code != 0:
                exc.exit_code = self.result.code
            raise

    def _steps(self, use_lock: bool, lock_timeout: float, lock_ttl: int) -> None:
        info, timings = self.info, self.timings
        if use_lock:
            self.lock = DeployLock(self.project, self.stage, self.store)
            if self.lock.local_only:
                info(f"sst-vault: warning: {self.lock.local_warning()}")
            self.held = self.lock.acquire(
                timeout=lock_timeout,
                ttl=lock_ttl,
                command=shlex.join(self.command),
                on_wait=lambda h: info(f"sst-vault: waiting for the deploy lock: {h.describe()}"),
                on_takeover=lambda h: info(
                    f"sst-vault: took over the expired deploy lock of {h.describe()}"
                ),
            )
        if self.remote:
            self._refuse_if_rescued()
        timings.mark("lock")
        if self.remote:
            self.store.pull(self.remote)
            self._reverify()
        timings.mark("pull")
        prepare(self.project, [self.stage], missing_ok=True)
        timings.mark("prepare")
        env = command_environment()
        self.result.code = self.signals.spawn(self.command, env)
        timings.mark("command")
        self._commit()
        timings.mark("commit")
        if self.remote and self.push:
            self._push()
        timings.mark("push")

    def _reverify(self) -> None:
        """The vault as the pull left it, every trust check applied again.

        The keys were read (and checked) before the lock and the pull, from the clone as it was
        then: a rotation pulled meanwhile (a member removed) must be what prepare opens and
        commit seals under, or a new stage would be sealed under the data key the removed
        member still holds (and his files under it would open); a record or data key that a
        writer swapped in meanwhile must be refused like any other.
        """
        pulled = Project.open(self.project.root, self.project.home.root)
        if pulled.app != self.project.app:
            raise RefusedError(
                f"the pull changed the app in sst-vault.toml from {self.project.app!r} to"
                f" {printable(pulled.app)!r} while {self.stage}'s deploy lock was taken",
                "review that commit; run again once the app name is settled",
            )
        pulled.keys  # noqa: B018 - verified now, before anything is prepared or sealed
        self.project = pulled

    def _refuse_if_rescued(self) -> None:
        """A rescued state of this stage is newer than the branch's: deploying would fork it."""
        lock = self.lock or DeployLock(self.project, self.stage, self.store)
        waiting = lock.rescues()
        if waiting:
            ref = waiting[0][0]
            raise RefusedError(
                f"a rescued state of {lock.name} is waiting on {printable(ref)}: deploying from "
                "the branch now would start from an older state",
                f"land it first: `sst-vault rescue land --stage {self.stage} "
                f"{printable(ref.rsplit('/', 1)[1], 40)}` (or drop it: `sst-vault rescue drop`)",
            )

    def _commit(self) -> None:
        """Commit whatever state the command left, also after a failure."""
        project, stage = self.project, self.stage
        home_files = [project.home.state_file(kind, project.app, stage) for kind in KINDS]
        if not any(path.is_file() for path in home_files):
            return  # nothing deployed (a first deploy that failed early): nothing to keep
        summary = shlex.join(self.command)
        if len(summary) > 100:
            summary = summary[:99] + "…"
        try:
            report = commit(
                project,
                [stage],
                # [skip ci]: this push must not start another deploy pipeline.
                message=f"sst-vault run --stage {stage}: `{summary}` exited {self.result.code} "
                "[skip ci]",
                push=False,
            )
        except (VaultError, OSError) as exc:
            # The command may have deployed: the stage stays locked unless the state itself is
            # what failed (not JSON: nothing there to keep).
            error = self._in_home(exc, "still", keep=not isinstance(exc, InvalidStateError))
            if error is exc:
                raise
            raise error from None
        self.result.commit = report.commit

    def _push(self) -> None:
        try:
            self._push_or_rescue()
        except OSError as exc:
            # git could not even start (fork refused at a process limit): as for an unreachable
            # remote, the state may be only in this clone, so the stage stays locked.
            error = from_os_error(exc)
            self.keep_lock = "its state may be only in this clone"
            error.hint = f"{error.hint}; the state is committed in {self.store.top}" + (
                f" and the deploy lock of {self.stage} stays held until it is pushed: after "
                f"`git push`, `sst-vault lock release --stage {self.stage}` from this clone"
                if self.held is not None
                else ": push it from there with `git push`"
            )
            raise error from None

    def _push_or_rescue(self) -> None:
        store, remote, stage = self.store, self.remote, self.stage
        assert remote is not None
        if not (self.result.commit or store.unpushed(remote, store.current_branch())):
            return
        try:
            pushed = self._push_resealing()
        except KeysChangedError as exc:
            # Sealed under a data key a removal may have retired: not to a rescue ref either.
            self.keep_lock = "its state is only in this clone"
            exc.hint = (
                f"{exc.hint}: the state is in {self.project.home.root / 'state'} (*/"
                f"{self.project.app}/{stage}.json) on this machine"
                + (f", and the deploy lock of {stage} stays held" if self.held else "")
            )
            raise
        except (DivergedError, PushRefusedError, PushTimeoutError) as exc:
            if self.dropped:
                raise  # said already: the state is only in this SST home, no commit has it
            # A CI runner's clone is thrown away after the job: keep the commit on the remote,
            # and the stage locked, so nobody deploys from the state the branch still has.
            saved = self._rescue()
            locked = self.held is not None
            if saved:
                self.keep_lock = f"its state is on {saved}"
                exc.hint = (
                    f"{exc.hint}; the state is saved on {remote} as {saved}"
                    + (f" and the deploy lock of {stage} stays held" if locked else "")
                    + f": land it with `sst-vault rescue land --stage {stage} "
                    f"{saved.rsplit('/', 1)[1]}`"
                )
            else:
                self.keep_lock = "its state is only in this clone"
                exc.hint = (
                    f"{exc.hint}; {remote} refused the rescue ref too, so the state is only in "
                    f"{store.top} (commit {store.head()[:12]})"
                    + (
                        f" and the deploy lock of {stage} stays held: push it from here, then "
                        f"`sst-vault lock release --stage {stage}`"
                        if locked
                        else ": push it from here"
                    )
                )
            raise
        except GitError as exc:  # unreachable, or broken off: no rescue ref can get there either
            if self.dropped:
                raise  # said already: the state is only in this SST home, no commit has it
            self.keep_lock = "its state is only in this clone"
            if self.held is not None:
                exc.hint = (
                    f"{exc.hint or 'retry'}; the deploy lock of {stage} stays held until then: "
                    f"after pushing, `sst-vault lock release --stage {stage}` from this clone"
                )
            raise
        if pushed.attempts > 1:
            self.info(
                f"sst-vault: pushed after {pushed.attempts} attempts "
                f"({pushed.rebased} rebased onto others' pushes)"
            )
        self.result.pushed = True

    def _push_resealing(self) -> PushResult:
        """Push; when the remote changed the vault's keys meanwhile (a member removed during the
        deploy), drop our commit, pull, verify again and commit the state again under the new
        data key, then push that: the commit sealed under the data key before never leaves this
        clone, not even to a rescue ref. Up to RESEALS times, then `KeysChangedError`."""
        store, remote, stage = self.store, self.remote, self.stage
        assert remote is not None
        for attempt in range(RESEALS + 1):
            protect = [store.relative(self.project.repo.vault_file(k, stage)) for k in KINDS]
            keys = key_paths(self.project, store)
            retired = data_key_retired(self.project, store)
            try:
                return store.push(
                    remote, protect, timeout=self.push_timeout, keys=keys, retired=retired
                )
            except KeysChangedError:
                ours_alone = store.unpushed(remote, store.current_branch()) == 1
                if self.result.commit is None or not ours_alone or attempt == RESEALS:
                    # Not ours to drop (earlier commits of this clone, which the pull would
                    # rebase onto the new keys), or no end to it.
                    raise
                self.info(
                    f"sst-vault: the vault's keys changed on {remote} during the deploy:"
                    f" sealing {stage}'s state again under the new data key"
                )
                store.git("reset", "--quiet", "--keep", "HEAD~1")  # our commit, on top
                self.result.commit = None
                # From here until the new commit, the state is only in this SST home.
                self.dropped = True
                try:
                    store.pull(remote)
                    self._reverify()
                except (VaultError, OSError) as exc:
                    raise self._in_home(exc, "only") from None
                self._commit()
                self.dropped = False
                if self.result.commit is None:
                    return store.push(
                        remote, protect, timeout=self.push_timeout, keys=keys, retired=retired
                    )
        raise AssertionError("unreachable")

    def _in_home(self, exc: VaultError | OSError, how: str, *, keep: bool = True) -> VaultError:
        """`exc` (an OSError made a `VaultError`), saying that the state the command left is
        `how` ("still", "only") in this machine's SST home and how to commit it from there.

        A CI runner's SST home goes with the runner: with `keep`, a held deploy lock stays
        held, so nobody deploys from the older state on the branch meanwhile.
        """
        error = exc if isinstance(exc, VaultError) else from_os_error(exc)
        stage, project = self.stage, self.project
        keep = keep and self.held is not None
        if keep:
            self.keep_lock = "its state is only in this machine's SST home"
        error.hint = (error.hint + "; " if error.hint else "") + (
            f"the state the command left is {how} in {project.home.root / 'state'} "
            f"(*/{project.app}/{stage}.json): commit it from this machine with "
            f"`sst-vault commit {stage} --push`"
            + (f", then `sst-vault lock release --stage {stage}`" if keep else "")
        )
        return error

    def _rescue(self) -> str | None:
        """Push HEAD to a rescue ref and note it in our lock; the ref, or None if refused."""
        assert self.remote is not None
        ref = rescue_ref(self.project, self.stage, self.store.head())
        result = self.store.git("push", "--porcelain", self.remote, f"HEAD:{ref}", check=False)
        if porcelain_status(result.out, ref) not in ("*", "="):
            return None
        if self.lock is not None and self.held is not None and not self.lock.local_only:
            try:
                noted = self.lock.note_rescue(self.held, ref)
            except VaultError:
                noted = None  # the lock still holds the stage; `lock status` lists the ref
            if noted is not None:
                self.held = noted
        return ref

    def _release(self, *, quiet: bool) -> None:
        """Give the lock back. With `quiet`, another error is on its way: only report."""
        lock = self.lock
        if lock is None:
            return
        if self.held is None:
            lock.abandon()  # interrupted or refused while taking it
            return
        if self.keep_lock:
            self.info(
                f"sst-vault: the deploy lock of {lock.name} stays held ({self.keep_lock}), "
                "so nobody deploys from the older state on the branch"
            )
            return
        broken = "sst-vault: warning: the deploy lock was broken while this run held it"
        try:
            released = lock.release(self.held.sha)
        except LockBrokenError as exc:
            self.info(f"{broken}: {exc}")  # our state is safe; nothing of ours left to release
        except VaultError as exc:
            if not quiet:
                raise
            self.info(f"sst-vault: the deploy lock of {lock.name} was not released: {exc}")
        else:
            if not released:
                self.info(f"{broken}; check that nobody else deployed {lock.stage} meanwhile")
            elif quiet:
                self.info(f"sst-vault: released the deploy lock of {lock.name}")


# How often `run` seals its state again when the vault's keys keep changing under its push.
RESEALS = 3


def rescue_ref(project: Project, stage: str, sha: str) -> str:
    """Where a state commit that could not be pushed is kept on the remote (next to the locks)."""
    return f"{rescue_root(project.config.lock_prefix)}/{project.app}/{stage}/{sha[:12]}"
