"""Helpers shared by the CLI-level tests: SST deploys, refusal checks, key facts, clones, files.

One helper per job: a test module that needs a deploy, a refusal check or a key's id takes it
from here, so every test gets the same (strongest) guarantee.

Like conftest.py, nothing here mocks git, crypto or the file system: a "deploy" writes the
files SST writes (through `sstfake`), a clone is a real `git clone` of a bare remote.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sstfake
from conftest import APP, CLIResult, VaultProject, base_env, git, make_project

TEMP_PREFIX = ".sst-vault-tmp-"
SYNCED_KINDS = ("passphrase", "app", "secret")


_TEMPLATES: dict[str, VaultProject] = {}


def fresh_project(tmp_path: Path, backend: str = "age", name: str = "repo") -> VaultProject:
    """What `make_project` builds, copied from one made per backend and test run.

    `key generate` and `init` cost about 0.4 s of CPU; a copy of their result keeps the suite
    fast. Every copy shares the template's key and vault id, and gets its own HOME, git
    config and SST home under `tmp_path`.
    """
    if backend not in _TEMPLATES:
        base = Path(tempfile.mkdtemp(prefix="sst-vault-template-"))
        atexit.register(shutil.rmtree, base, True)
        _TEMPLATES[backend] = make_project(base, backend=backend)
    template = _TEMPLATES[backend]
    root = tmp_path / name
    shutil.copytree(template.root, root, symlinks=True)
    env = base_env(tmp_path)
    env["SST_VAULT_KEY"] = template.key
    return VaultProject(root, tmp_path / f"{name}-sst-home", env, template.key)


@pytest.fixture(name="vault_project")
def copied_vault_project(tmp_path: Path) -> VaultProject:
    """conftest's `vault_project`, copied from a template: a module imports it to go faster."""
    return fresh_project(tmp_path)


@pytest.fixture(name="committed")
def committed_prod(vault_project: VaultProject) -> VaultProject:
    """A vault with stage prod (and one secret) deployed and committed."""
    deploy(vault_project, "prod", "v1", secrets={"A": "1"})
    assert vault_project.cli("commit", "prod").code == 0
    return vault_project


def stage_key(stage: str) -> bytes:
    """A fixed passphrase per stage name: sstfake caches Pulumi's slow key derivation by it."""
    return hashlib.sha256(f"sst-vault tests {stage}".encode()).digest()


def deploy(
    project: VaultProject,
    stage: str,
    marker: str = "",
    *,
    resources: int = 3,
    size: int | None = None,
    secrets: dict[str, str] | None = None,
    seed: int | None = None,
    home: Path | None = None,
    counter: int | None = None,
) -> Path:
    """What `sst deploy --stage STAGE` (and `sst secret set`) leave in the SST home.

    `counter`: a number in the checkpoint that lockutil's BUMP script (a stand-in for a deploy
    run by `sst-vault run`) increments. Returns the path of the stage's state.
    """
    home = home or project.home
    if sstfake.read_passphrase(home, project.app, stage) is None:
        sstfake.write_passphrase(home, project.app, stage, stage_key(stage))
    if secrets is not None:
        sstfake.write_secrets(home, project.app, stage, secrets)
    path = sstfake.write_state(home, project.app, stage, resources, marker, size, seed=seed)
    if counter is not None:
        data = json.loads(path.read_text())
        data["counter"] = counter
        path.write_text(json.dumps(data, indent=4))
    return path


def wipe_home(project: VaultProject) -> None:
    """A fresh CI runner: no SST state and no sync records."""
    shutil.rmtree(project.home, ignore_errors=True)


@dataclass(frozen=True)
class Before:
    """What a refused command must not change (DESIGN.md, guarantee 5)."""

    home: dict[str, bytes]
    repo: dict[str, bytes]
    head: str
    status: str


def before(project: VaultProject) -> Before:
    return Before(
        project.snapshot_home(),
        project.snapshot_repo(),
        project.git("rev-parse", "HEAD"),
        project.git("status", "--porcelain", "--untracked-files=all"),
    )


def error_line(err: str) -> str:
    """The one `Error: <reason>: <what to do>` line of a stderr that may hold other output.

    For commands whose stderr legitimately carries more (`run` passes its command's output
    through, a lock wait prints progress): no traceback, exactly one `Error:` line, and it is
    the last line, so nothing the tool did after failing hides behind it. Where stderr must hold
    nothing else, use `assert_refused`.
    """
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, err
    assert err.endswith(errors[0] + "\n"), err
    assert ": " in errors[0][len("Error: ") :], errors[0]
    return errors[0]


def assert_refused(
    result: CLIResult,
    code: int,
    *words: str,
    hint: bool = True,
    out: str | None = "",
    project: VaultProject | None = None,
    was: Before | None = None,
) -> str:
    """Exit `code`, stderr exactly one `Error: …` line naming `words`, no traceback.

    `hint`: the line has a reason, then what to do (`Error: <reason>: <what to do>`).
    `out`: what stdout holds (nothing by default; None when the caller checks it itself).
    `project` and `was` (from `before(project)`): the SST home, the repository's state
    folder, HEAD and the work tree are exactly as they were.
    """
    assert result.code == code, result.output
    assert "Traceback" not in result.output, result.output
    if out is not None:
        assert result.out == out, result.output
    lines = result.err.splitlines()
    assert len(lines) == 1 and result.err.endswith("\n"), result.err
    line = lines[0]
    assert line.startswith("Error: "), line
    if hint:
        assert ": " in line[len("Error: ") :], line
    for word in words:
        assert word in line, (word, line)
    assert (project is None) == (was is None), "pass both project and was, or neither"
    if project is not None and was is not None:
        assert project.snapshot_home() == was.home, "the SST home changed"
        assert project.snapshot_repo() == was.repo, "the repository's state folder changed"
        assert project.git("rev-parse", "HEAD") == was.head, "a commit was made"
        status = project.git("status", "--porcelain", "--untracked-files=all")
        assert status == was.status, "the work tree changed"
    return line


def without_key(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("SST_VAULT_KEY", "SST_VAULT_KEY_FILE")}


def _printed(project: VaultProject, *args: str, env: dict[str, str] | None = None) -> str:
    result = project.cli(*args, env=env)
    assert result.code == 0, (args, result.output)
    assert "Traceback" not in result.output, result.output
    return result.out.strip()


def key_id(project: VaultProject, env: dict[str, str] | None = None) -> str:
    """`sst-vault key id`: the id of the key this person (or `env`) uses."""
    return _printed(project, "key", "id", env=env)


def public_of(
    project: VaultProject, key: str | None = None, env: dict[str, str] | None = None
) -> str:
    """`sst-vault key export-public` of the project's key, or of `key` (in `env`) if given."""
    env = dict(env if env is not None else project.env)
    if key is not None:
        env["SST_VAULT_KEY"] = key
    return _printed(project, "key", "export-public", env=env)


def vault_pin(project: VaultProject, env: dict[str, str] | None = None) -> str:
    """`sst-vault key pin`: the vault's identity (the value of SST_VAULT_PIN)."""
    return _printed(project, "key", "pin", env=env)


def trusted_of(person: VaultProject) -> dict | None:
    """What this machine (this SST home) remembers of the vault, or None."""
    path = person.home / ".sst-vault" / "trust" / f"{APP}.json"
    return json.loads(path.read_text()) if path.exists() else None


def vault_header(blob: bytes | Path) -> dict:
    """The clear JSON header of a vault file (its bytes or its path), read by hand.

    Magic (8 bytes), version (1), big-endian length (4), then that much JSON: read as an
    attacker or a reviewer would, without sst-vault's own parser.
    """
    data = blob.read_bytes() if isinstance(blob, Path) else blob
    (length,) = struct.unpack(">I", data[9:13])
    return json.loads(data[13 : 13 + length])


def temp_files(*roots: Path) -> list[Path]:
    """Left-over temporary files of sst-vault's atomic writes under `roots`."""
    found: list[Path] = []
    for root in roots:
        if root.exists():
            found += [p for p in root.rglob(f"{TEMP_PREFIX}*")]
    return found


def tree_state(path: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file below `path`, without following symlinks."""
    out: dict[str, tuple[bytes, int]] = {}
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            p = Path(dirpath, name)
            if p.is_symlink():
                out[str(p.relative_to(path))] = (os.readlink(p).encode(), 0)
            else:
                out[str(p.relative_to(path))] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def head(project: VaultProject) -> str:
    return project.git("rev-parse", "HEAD").strip()


def commit_count(project: VaultProject) -> int:
    return int(project.git("rev-list", "--count", "HEAD").strip())


def add_remote(project: VaultProject, tmp_path: Path, name: str = "remote.git") -> Path:
    """A bare remote for `project`, with main pushed to it."""
    remote = tmp_path / name
    git("init", "-q", "--bare", str(remote), cwd=tmp_path, env=project.env)
    project.git("remote", "add", "origin", str(remote))
    project.git("push", "-q", "-u", "origin", "HEAD:main")
    return remote


def clone(project: VaultProject, remote: Path, tmp_path: Path, name: str) -> VaultProject:
    """A second working copy of the same vault (same key), with an SST home of its own."""
    root = tmp_path / name
    git("clone", "-q", str(remote), str(root), cwd=tmp_path, env=project.env)
    return VaultProject(root, tmp_path / f"{name}-sst-home", project.env, project.key)


def other_home(project: VaultProject, home: Path) -> VaultProject:
    """The same repository seen from another SST home (another machine's checkout)."""
    return VaultProject(project.root, home, project.env, project.key)


def run_git(args: list[str], cwd: Path, env: dict[str, str]) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True).stdout


# What `refusing_fork` installs: the real fork's refusal (EAGAIN), for the chosen programs only.
_REFUSE_FORK = """
import errno, os, subprocess
_PROGRAM, _WORDS, _LEFT = {program!r}, {words!r}, [{times!r}]
_execute_child = subprocess.Popen._execute_child
def _refused(self, args, *rest, **kwargs):
    args = [str(a) for a in args]
    if args[:1] == [_PROGRAM] and all(any(w in a for a in args) for w in _WORDS) and _LEFT[0] != 0:
        _LEFT[0] = None if _LEFT[0] is None else _LEFT[0] - 1
        raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    return _execute_child(self, args, *rest, **kwargs)
subprocess.Popen._execute_child = _refused
"""


def refusing_fork(
    env: dict[str, str], folder: Path, program: str, *words: str, times: int | None = None
) -> dict[str, str]:
    """`env` for a CLI in which every `program` (e.g. git) whose arguments contain each of
    `words` cannot start (the first `times` of them in each process, if given): fork fails
    with EAGAIN, as at a full pids.max (a process limit does not bind root, and only those
    processes must fail). A `sitecustomize` in `folder` does it, in every Python process the
    CLI starts from that environment (`run` re-executes itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = _REFUSE_FORK.format(program=program, words=list(words), times=times)
    (folder / "sitecustomize.py").write_text(text)
    path = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path}


# --- other processes: one stopped at a pause point, one holding a lock ------------------------


def spawn_paused(p: VaultProject, step: str, *args: str) -> subprocess.Popen:
    """Run `sst-vault ARGS` until it stops itself (SIGSTOP) at the pause point `step`.

    The process stays stopped: the caller kills it (`kill_at`) or continues it (SIGCONT).
    Fails if it exited before reaching `step`.
    """
    env = {**p.env, "SST_VAULT_TEST_PAUSE": step}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vault", "--sst-home", str(p.home), *args],
        cwd=p.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _pid, status = os.waitpid(proc.pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        proc.returncode = os.waitstatus_to_exitcode(status)
        raise AssertionError(f"exited ({proc.returncode}) before pausing: {proc.stderr.read()}")
    return proc


def kill_at(p: VaultProject, step: str, *args: str) -> None:
    """Run `sst-vault ARGS` until it reaches `step`, then SIGKILL it there."""
    proc = spawn_paused(p, step, *args)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()


@contextlib.contextmanager
def holding_flock(lock_file: Path) -> Iterator[None]:
    """Another process holds `lock_file`'s flock (as a running sst-vault would) until the end."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            f"fd = os.open({str(lock_file)!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.communicate("", timeout=10)
