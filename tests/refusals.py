"""Checks shared by the refusal tests: one line on stderr, the right exit code, nothing written.

Every failure a user can cause must leave the SST home and the repository exactly as they were
(DESIGN.md, guarantee 5), and say in one line what happened and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from conftest import CLIResult, VaultProject


@dataclass(frozen=True)
class Before:
    """What a refused command must not change."""

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


def assert_refused(
    result: CLIResult, code: int, *needles: str, project: VaultProject, was: Before
) -> str:
    """Exit `code`, exactly one `Error: ` line naming every needle, no traceback, no change."""
    assert result.code == code, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    line = lines[0]
    assert line.startswith("Error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert project.snapshot_home() == was.home, "the SST home changed"
    assert project.snapshot_repo() == was.repo, "the repository's state folder changed"
    assert project.git("rev-parse", "HEAD") == was.head, "a commit was made"
    status = project.git("status", "--porcelain", "--untracked-files=all")
    assert status == was.status, "the work tree changed"
    return line


def deploy(project: VaultProject, stage: str, marker: str = "v1") -> None:
    """A small stand-in for `sst deploy` + `sst secret set`: passphrase, app state, secrets."""
    import json

    import sstfake

    home, app = project.home, project.app
    if sstfake.read_passphrase(home, app, stage) is None:
        sstfake.write_passphrase(home, app, stage)
    state = {
        "version": 3,
        "checkpoint": {
            "stack": f"organization/{app}/{stage}",
            "latest": {"marker": marker, "resources": []},
        },
    }
    sstfake.put_data(home, "app", app, stage, (json.dumps(state, indent=4) + "\n").encode())
    sstfake.write_secrets(home, app, stage, {"DB_PASSWORD": f"secret-{marker}"})


def wipe_home(project: VaultProject) -> None:
    """A fresh CI runner: no SST state and no sync records."""
    import shutil

    shutil.rmtree(project.home, ignore_errors=True)


def without_key(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("SST_VAULT_KEY", "SST_VAULT_KEY_FILE")}
