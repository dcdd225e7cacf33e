"""Shared helpers for the lock and run tests: bare remotes, clones as "runners", git daemon.

Every runner is a real clone with its own SST home; remotes are real bare repositories reached
over file:// or over the git protocol on loopback (`git daemon`), never mocked.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import VaultProject, base_env, git, make_project
from helpers import deploy

STAGE = "prod"
# A stand-in for `sst deploy`: bumps a counter in the stage's checkpoint (argv[1]) and exits
# with argv[2]; with a third argument it writes its pid there, waits for SIGTERM, records it in
# the state and exits 42 (SIGINT alike).
BUMP = """\
import json, os, signal, sys, time
path, code = sys.argv[1], int(sys.argv[2])
def bump(note):
    data = json.load(open(path))
    data["counter"] = data.get("counter", 0) + 1
    data.setdefault("notes", []).append(note)
    with open(path, "w") as out:
        json.dump(data, out, indent=4)
if len(sys.argv) > 3:
    def on_term(signum, frame):
        bump("got signal %d" % signum)
        sys.exit(42)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    with open(sys.argv[3] + ".tmp", "w") as ready:
        ready.write(str(os.getpid()))
    os.rename(sys.argv[3] + ".tmp", sys.argv[3])
    time.sleep(60)
bump("run")
sys.exit(code)
"""

# A stand-in for `sst deploy` of any stage: argv = tests dir, SST home, app, stage. The first
# deploy writes a fresh state (as SST would), later ones bump its counter.
DEPLOY = """\
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import sstfake
home, app, stage = Path(sys.argv[2]), sys.argv[3], sys.argv[4]
path = sstfake.state_path(home, "app", app, stage)
if not path.exists():
    sstfake.write_state(home, app, stage)
data = json.loads(path.read_text())
data["counter"] = data.get("counter", 0) + 1
path.write_text(json.dumps(data, indent=4))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Daemon:
    """`git daemon` serving a folder of bare repositories on loopback, receive-pack enabled."""

    base: Path
    env: dict[str, str]
    port: int = 0
    proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        self.port = self.port or free_port()  # a restart keeps its port (and the remote's URL)
        self.proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--enable=receive-pack",
                f"--base-path={self.base}",
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                str(self.base),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # `git` runs git-daemon as a child: stop the whole group
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("git daemon did not start")

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(5)


@dataclass
class Team:
    """A bare remote holding an initialised vault, and the clones ("runners") made from it."""

    tmp: Path
    url: str
    bare: Path
    first: VaultProject
    runners: list[VaultProject] = field(default_factory=list)

    def clone(self, name: str) -> VaultProject:
        root = self.tmp / name
        env = dict(self.first.env)
        git("clone", "-q", self.url, str(root), cwd=self.tmp, env=env)
        runner = VaultProject(root, self.tmp / f"{name}-sst-home", env, self.first.key)
        self.runners.append(runner)
        return runner

    def remote_git(self, *args: str) -> str:
        return git(*args, cwd=self.bare, env=self.first.env)

    def lock_refs(self) -> list[str]:
        return self.remote_git("for-each-ref", "--format=%(refname)", "refs/sst-vault").split()


def _build_team(tmp_path: Path, seeded: bool) -> Team:
    first = make_project(tmp_path, "seed")
    first.git("add", "-A")
    first.git("commit", "-q", "-m", "sst-vault init")
    bare = tmp_path / "remotes" / "app.git"
    bare.parent.mkdir(exist_ok=True)
    git("init", "-q", "--bare", str(bare), cwd=tmp_path, env=first.env)
    first.git("remote", "add", "origin", bare.as_uri())
    first.git("push", "-q", "-u", "origin", "main")
    team = Team(tmp_path, bare.as_uri(), bare, first)
    if seeded:
        deploy(first, STAGE, counter=0)
        result = first.cli("commit", STAGE, "--push")
        assert result.code == 0, result.output
    (tmp_path / "key.txt").write_text(first.key)
    return team


# Building a vault costs a few CLI calls; each test gets a copy of one built per session.
_TEMPLATES: dict[bool, Path] = {}


def make_team(tmp_path: Path, daemon: Daemon | None = None, seeded: bool = False) -> Team:
    """An initialised vault pushed to a bare remote (file://, or git:// through `daemon`).

    `seeded`: the remote also holds a prod state (counter 0) deployed by the first runner.
    """
    if seeded not in _TEMPLATES:
        template = Path(tempfile.mkdtemp(prefix="sst-vault-team-"))
        atexit.register(shutil.rmtree, template, True)
        _build_team(template, seeded)
        _TEMPLATES[seeded] = template
    template = _TEMPLATES[seeded]
    for name in ("seed", "seed-sst-home", "remotes"):
        if (template / name).exists():
            shutil.copytree(template / name, tmp_path / name, symlinks=True, dirs_exist_ok=True)
    key = (template / "key.txt").read_text()
    env = dict(base_env(tmp_path), SST_VAULT_KEY=key)
    first = VaultProject(tmp_path / "seed", tmp_path / "seed-sst-home", env, key)
    bare = tmp_path / "remotes" / "app.git"
    url = daemon.url("app.git") if daemon else bare.as_uri()
    first.git("remote", "set-url", "origin", url)
    return Team(tmp_path, url, bare, first)


def counter_of(project: VaultProject, stage: str = STAGE) -> int:
    return json.loads(project.state_file("app", stage).read_text()).get("counter", 0)


def deploy_cmd(project: VaultProject, script: Path, stage: str) -> list[str]:
    tests = str(Path(__file__).resolve().parent)
    return [sys.executable, str(script), tests, str(project.home), project.app, stage]


def run_all(commands: list[tuple[VaultProject, list[list[str]]]], timeout: float = 600) -> None:
    """Start every runner at once, each doing its runs in a row; every run must succeed."""
    procs = []
    for project, runs in commands:
        script = " && ".join(shlex.join(cmd) for cmd in runs)
        procs.append(
            subprocess.Popen(
                ["sh", "-c", script],
                cwd=project.root,
                env=project.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    failed = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            failed.append(out)
    assert not failed, "\n----\n".join(failed)


def bump_cmd(project: VaultProject, script: Path, code: int = 0, *extra: str) -> list[str]:
    return [sys.executable, str(script), str(project.state_file("app", STAGE)), str(code), *extra]
