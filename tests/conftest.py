"""Shared fixtures: a real git repository with an initialised vault, and the CLI as a subprocess.

Nothing here mocks git, crypto or the file system. Each test gets its own HOME, git config and
SST home under tmp_path, and the keyring is switched off (the `fail` backend) unless a test
sets up a real Secret Service itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import pytest

APP = "demo-app"
SST_CONFIG = (
    '/// <reference path="./.sst/platform/config.d.ts" />\n'
    "export default $config({\n"
    "  app(input) {\n"
    f'    return {{ name: "{APP}", removal: "retain", home: "local" }};\n'
    "  },\n"
    "  async run() {},\n"
    "});\n"
)


@dataclass
class CLIResult:
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err


def run_cli(
    *args: str, cwd: Path, env: dict[str, str], input: str | None = None, timeout: float = 120
) -> CLIResult:
    """Run `python -m vault ARGS` as a real subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "vault", *args],
        cwd=cwd,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CLIResult(proc.returncode, proc.stdout, proc.stderr)


def git(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


def base_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: own HOME and git identity, no key, no usable keyring."""
    home = tmp_path / "user-home"
    home.mkdir(exist_ok=True)
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text(
        "[user]\n\tname = Test User\n\temail = test@example.com\n"
        "[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SST_VAULT_", "GIT_"))}
    env.pop("XDG_CONFIG_HOME", None)
    # The `sst-vault` of the Python under test comes first on PATH, as for a user whose venv or
    # pipx folder is on PATH: git finds the diff driver (`sst-vault textconv`) there.
    scripts = sysconfig.get_path("scripts")
    env["PATH"] = os.pathsep.join(
        [scripts, *(p for p in env.get("PATH", "").split(os.pathsep) if p)]
    )
    env.update(
        HOME=str(home),
        GIT_CONFIG_GLOBAL=str(gitconfig),
        GIT_CONFIG_NOSYSTEM="1",
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
    )
    return env


def new_key(env: dict[str, str], backend: str = "age") -> str:
    result = run_cli("key", "generate", "--backend", backend, cwd=Path.cwd(), env=env)
    assert result.code == 0, result.err
    return result.out.strip()


@dataclass
class VaultProject:
    """A git repo with sst.config.ts and an initialised vault, plus an SST home."""

    root: Path
    home: Path
    env: dict[str, str]
    key: str
    app: str = APP
    extra: dict[str, str] = field(default_factory=dict)

    def cli(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        input: str | None = None,
        cwd: Path | None = None,
    ) -> CLIResult:
        return run_cli(
            "--sst-home",
            str(self.home),
            *args,
            cwd=cwd or self.root,
            env=env if env is not None else self.env,
            input=input,
        )

    def git(self, *args: str) -> str:
        return git(*args, cwd=self.root, env=self.env)

    def state_file(self, kind: str, stage: str) -> Path:
        return self.home / "state" / kind / self.app / f"{stage}.json"

    def vault_file(self, kind: str, stage: str) -> Path:
        return self.root / "infra" / "state" / kind / f"{stage}.json.vault"

    def snapshot_home(self) -> dict[str, bytes]:
        """Every file under the SST home's state folder, for "nothing changed" checks."""
        state = self.home / "state"
        if not state.exists():
            return {}
        return {
            str(p.relative_to(state)): p.read_bytes()
            for p in sorted(state.rglob("*"))
            if p.is_file() and not p.is_symlink()
        }

    def snapshot_repo(self) -> dict[str, bytes]:
        state = self.root / "infra" / "state"
        return {
            str(p.relative_to(state)): p.read_bytes()
            for p in sorted(state.rglob("*"))
            if p.is_file() and not p.is_symlink()
        }


def new_app_repo(root: Path, env: dict[str, str]) -> Path:
    """A git repo at `root` whose one commit holds sst.config.ts: what `init` expects to find."""
    root.mkdir()
    git("init", "-q", cwd=root, env=env)
    (root / "sst.config.ts").write_text(SST_CONFIG)
    git("add", "sst.config.ts", cwd=root, env=env)
    git("commit", "-q", "-m", "app", cwd=root, env=env)
    return root


def make_project(
    tmp_path: Path,
    name: str = "repo",
    backend: str = "age",
    key: str | None = None,
    env: dict[str, str] | None = None,
) -> VaultProject:
    env = dict(env or base_env(tmp_path))
    root = new_app_repo(tmp_path / name, env)
    key = key or new_key(env, backend)
    env["SST_VAULT_KEY"] = key
    home = tmp_path / f"{name}-sst-home"
    project = VaultProject(root, home, env, key)
    # An environment key is named "ci" only when init runs in CI: name it for every run.
    result = project.cli("init", "--no-keyring", "--name", "ci")
    assert result.code == 0, result.output
    return project


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path)


@pytest.fixture
def vault_project(tmp_path: Path) -> VaultProject:
    """An age vault, initialised with a key from SST_VAULT_KEY."""
    return make_project(tmp_path)


@pytest.fixture
def fernet_project(tmp_path: Path) -> VaultProject:
    return make_project(tmp_path, backend="fernet")


# With CI set a missing real part is a failure, never a skip (the project's rule): the commands
# the tests run and the real SST CLI are checked once, before the first test, by name; tests
# that need one use `needs(...)` or `skip_or_fail(...)`, which never skip with CI set either.
REAL_PARTS = {
    "age": "age",
    "xxd": "xxd",
    "ssh-keygen": "openssh-client",
    "secret-tool": "libsecret-tools",
    "gnome-keyring-daemon": "gnome-keyring",
    "dbus-run-session": "dbus",
    "node": "nodejs",
    "git": "git",
}


def in_ci() -> bool:
    """CI is set (to anything but "", "0" or "false"): a missing real part fails, never skips."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def skip_or_fail(reason: str) -> None:
    """Skip on a developer's machine; with CI set, fail: the suite must not shrink silently."""
    if in_ci():
        pytest.fail(f"CI is set and {reason}: `bash scripts/test` installs every real part")
    pytest.skip(reason)


def needs(*commands: str) -> pytest.MarkDecorator:
    """Skip where `commands` are missing, except with CI set: there the test runs (and fails)."""
    import shutil

    missing = [command for command in commands if shutil.which(command) is None]
    return pytest.mark.skipif(
        bool(missing) and not in_ci(), reason=f"not installed: {', '.join(missing)}"
    )


def missing_real_parts() -> list[str]:
    import shutil

    from sst_real import missing_reason

    missing = [
        f"{command} (Debian package {package})"
        for command, package in REAL_PARTS.items()
        if shutil.which(command) is None
    ]
    sst = missing_reason()
    if sst:
        missing.append(sst)
    return missing


def pytest_sessionstart(session: pytest.Session) -> None:
    if not in_ci():
        return
    missing = missing_real_parts()
    if missing:
        raise pytest.UsageError(
            "CI is set and real parts are missing (tests would skip): "
            + "; ".join(missing)
            + ". Run `bash scripts/test`, which installs them."
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The count of real-SST runs retried after SST's own crash (see sst_real.RACE_ATTEMPTS)."""
    sst_real = sys.modules.get("sst_real")
    retries = getattr(sst_real, "RETRIES", [])
    if sst_real is not None:
        terminalreporter.write_line(
            f"real SST: {len(retries)} run(s) retried after SST's own concurrent-map crash"
            + "".join(f"\n  {run}" for run in retries)
        )
