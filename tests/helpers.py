"""Helpers shared by the CLI-level tests: SST deploys, refusal checks, clones, file listings.

Like conftest.py, nothing here mocks git, crypto or the file system: a "deploy" writes the
files SST writes (through `sstfake`), a clone is a real `git clone` of a bare remote.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import sstfake
from conftest import CLIResult, VaultProject, base_env, git, make_project

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
) -> None:
    """What `sst deploy --stage STAGE` (and `sst secret set`) leave in the SST home."""
    home = home or project.home
    if sstfake.read_passphrase(home, project.app, stage) is None:
        sstfake.write_passphrase(home, project.app, stage, stage_key(stage))
    if secrets is not None:
        sstfake.write_secrets(home, project.app, stage, secrets)
    sstfake.write_state(home, project.app, stage, resources, marker, size, seed=seed)


def assert_refused(result: CLIResult, code: int, *words: str, hint: bool = True) -> str:
    """Exit `code`, no stdout, stderr exactly one `Error: …` line naming `words`; no traceback.

    `hint`: the line has a reason, then what to do (`Error: <reason>: <what to do>`).
    """
    assert result.code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert result.out == "", result.output
    lines = result.err.splitlines()
    assert len(lines) == 1 and result.err.endswith("\n"), result.err
    line = lines[0]
    assert line.startswith("Error: "), line
    if hint:
        assert ": " in line[len("Error: ") :], line
    for word in words:
        assert word in line, (word, line)
    return line


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
