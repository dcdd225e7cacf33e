"""The cross-machine deploy lock: a ref on a real bare remote, shared by real clones."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import make_project
from helpers import error_line, refusing_fork
from lockutil import STAGE, make_team

from vault.lock import LockBrokenError, LockInfo, ci_run_url

REF = "refs/sst-vault/locks/demo-app/prod"


def test_exclusive_across_clones_and_only_the_holder_releases(tmp_path: Path) -> None:
    team = make_team(tmp_path)
    a, b = team.clone("a"), team.clone("b")
    assert a.cli("lock", "acquire", "--stage", STAGE).code == 0
    assert team.lock_refs() == [REF]
    info = LockInfo.parse(team.remote_git("log", "-1", "--format=%B", REF), "")
    assert info.command == "sst-vault lock acquire" and info.nonce and info.ttl == 6 * 3600

    refused = b.cli("lock", "acquire", "--stage", STAGE)
    assert refused.code == 1
    line = error_line(refused.err)
    assert "is held by" in line and " ago)" in line and "lock break --stage prod" in line

    status = b.cli("lock", "status", "--stage", STAGE)
    assert status.code == 0 and "locked by" in status.out and "(this clone)" not in status.out
    assert "(this clone)" in a.cli("lock", "status", "--stage", STAGE).out
    data = json.loads(b.cli("lock", "status", "--stage", STAGE, "--json").out)
    assert data["held"] and data["age_seconds"] >= 0 and not data["held_here"]

    stolen = b.cli("lock", "release", "--stage", STAGE)
    assert stolen.code == 1 and "does not hold" in error_line(stolen.err)
    assert team.lock_refs() == [REF]  # nothing lost: the lock is still a's

    again = a.cli("lock", "acquire", "--stage", STAGE)
    assert again.code == 0 and "already holds" in again.err
    assert a.cli("lock", "release", "--stage", STAGE).code == 0
    assert team.lock_refs() == []
    assert "not locked" in b.cli("lock", "status", "--stage", STAGE).out
    assert b.cli("lock", "acquire", "--stage", STAGE).code == 0
    assert a.cli("lock", "acquire", "--stage", STAGE).code == 1
    assert b.cli("lock", "release", "--stage", STAGE).code == 0


def test_every_lock_commit_is_unique_and_acquire_confirms_its_own(tmp_path: Path) -> None:
    """The pitfall: pushing an identical lock commit again reports "up to date", not a win."""
    from vault.lock import DeployLock
    from vault.project import Project

    team = make_team(tmp_path)
    a = team.clone("a")
    lock = DeployLock(Project.open(a.root, a.home), STAGE)
    first, second = lock._new_lock(60, "x"), lock._new_lock(60, "x")
    assert first.sha != second.sha and first.created[:16] == second.created[:16]
    assert lock._create(first.sha) is True
    assert lock._create(first.sha) is False  # same commit again: "up to date", not created
    assert lock._create(second.sha) is False
    lock.release(first.sha)
    assert team.lock_refs() == []


def test_waiting_names_the_holder_then_takes_the_lock(tmp_path: Path) -> None:
    team = make_team(tmp_path)
    a, b = team.clone("a"), team.clone("b")
    assert a.cli("lock", "acquire", "--stage", STAGE).code == 0
    waiter = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vault",
            "--sst-home",
            str(b.home),
            "lock",
            "acquire",
            "--stage",
            STAGE,
            "--lock-timeout",
            "30",
        ],
        cwd=b.root,
        env=b.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    assert waiter.poll() is None
    assert a.cli("lock", "release", "--stage", STAGE).code == 0
    _, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert "Waiting for the deploy lock:" in err and "sst-vault lock acquire" in err
    assert "Acquired" in err
    assert "(this clone)" in b.cli("lock", "status", "--stage", STAGE).out


def test_timeout_expires_with_the_holder_named(tmp_path: Path) -> None:
    team = make_team(tmp_path)
    a, b = team.clone("a"), team.clone("b")
    assert a.cli("lock", "acquire", "--stage", STAGE).code == 0
    start = time.monotonic()
    result = b.cli("lock", "acquire", "--stage", STAGE, "--lock-timeout", "1.5")
    assert 1.4 < time.monotonic() - start < 15
    assert result.code == 1 and "is held by" in error_line(result.err)
    assert "Waiting for the deploy lock" in result.err


def test_break_removes_a_stale_lock_and_the_old_holder_learns_it(tmp_path: Path) -> None:
    team = make_team(tmp_path)
    a, b = team.clone("a"), team.clone("b")
    assert a.cli("lock", "acquire", "--stage", STAGE).code == 0
    broken = b.cli("lock", "break", "--stage", STAGE)
    assert broken.code == 0 and "held by" in broken.err and "sst-vault lock acquire" in broken.err
    assert team.lock_refs() == []
    assert "was not locked" in b.cli("lock", "break", "--stage", STAGE).err
    assert b.cli("lock", "acquire", "--stage", STAGE).code == 0
    late = a.cli("lock", "release", "--stage", STAGE)
    assert late.code == 1 and "was broken and is now held by" in error_line(late.err)
    assert team.lock_refs() == [REF]  # b's lock survives a's late release
    assert b.cli("lock", "release", "--stage", STAGE).code == 0


def test_an_expired_lock_is_taken_over(tmp_path: Path) -> None:
    from vault.lock import DeployLock
    from vault.project import Project

    team = make_team(tmp_path)
    a, b = team.clone("a"), team.clone("b")
    # a's job died two hours ago holding a lock with a one-hour TTL.
    lock = DeployLock(Project.open(a.root, a.home), STAGE)
    old = lock._new_lock(3600, "npx sst deploy", now=datetime.now(UTC) - timedelta(hours=2))
    assert lock._create(old.sha)
    status = b.cli("lock", "status", "--stage", STAGE)
    assert "expired" in status.out and "(2h00m ago)" in status.out
    taken = b.cli("lock", "acquire", "--stage", STAGE)
    assert taken.code == 0 and "Took over the expired lock" in taken.err
    assert "(this clone)" in b.cli("lock", "status", "--stage", STAGE).out
    with pytest.raises(LockBrokenError):  # a's late release cannot remove b's lock
        lock.release(old.sha)
    assert "(this clone)" in b.cli("lock", "status", "--stage", STAGE).out


def test_without_a_remote_the_lock_is_local_with_a_warning(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    result = project.cli("lock", "acquire", "--stage", STAGE)
    assert result.code == 0 and "only guards this clone" in result.err
    assert project.git("for-each-ref", "--format=%(refname)", "refs/sst-vault").split() == [REF]
    status = project.cli("lock", "status", "--stage", STAGE)
    assert "(this clone)" in status.out
    assert project.cli("lock", "release", "--stage", STAGE).code == 0
    assert project.git("for-each-ref", "refs/sst-vault") == ""


def test_unreachable_remote_is_a_clear_error(tmp_path: Path) -> None:
    team = make_team(tmp_path)
    a = team.clone("a")
    a.git("remote", "set-url", "origin", (tmp_path / "gone.git").as_uri())
    for verb in ("acquire", "status"):
        result = a.cli("lock", verb, "--stage", STAGE)
        assert result.code == 1
        line = error_line(result.err)
        assert "deploy lock of demo-app/prod" in line and "gone.git" in line


def test_bad_stage_is_a_usage_error(tmp_path: Path) -> None:
    team = make_team(tmp_path)
    result = team.clone("a").cli("lock", "status", "--stage", "../x")
    assert result.code == 2 and "invalid stage name" in error_line(result.err)


@pytest.mark.parametrize(
    ("env", "url"),
    [
        (
            {
                "GITHUB_RUN_ID": "7",
                "GITHUB_SERVER_URL": "https://github.com",
                "GITHUB_REPOSITORY": "o/r",
            },
            "https://github.com/o/r/actions/runs/7",
        ),
        ({"CI_JOB_URL": "https://gitlab.com/o/r/-/jobs/9"}, "https://gitlab.com/o/r/-/jobs/9"),
        (
            {
                "SYSTEM_COLLECTIONURI": "https://dev.azure.com/org/",
                "SYSTEM_TEAMPROJECT": "My Proj",
                "BUILD_BUILDID": "12",
            },
            "https://dev.azure.com/org/My%20Proj/_build/results?buildId=12",
        ),
        ({}, None),
    ],
)
def test_ci_run_is_recorded(env: dict[str, str], url: str | None) -> None:
    assert ci_run_url(env) == url


def test_an_acquire_that_fails_after_its_push_takes_its_lock_back(tmp_path: Path) -> None:
    """The lock commit got in, then the look that confirms it could not start (fork refused at
    a process limit): `lock acquire` says so and removes its own lock, as `run` does. It used
    to leave a lock that this clone could not release (no holder file) and that stopped every
    deploy of the stage until someone broke it."""
    team = make_team(tmp_path)
    a = team.clone("a")
    env = refusing_fork(a.env, tmp_path / "refuse-look", "git", "ls-remote", times=1)
    result = a.cli("lock", "acquire", "--stage", STAGE, env=env)
    assert result.code == 1, result.output
    assert "pids.max" in error_line(result.err)
    assert team.lock_refs() == []
    assert a.cli("lock", "acquire", "--stage", STAGE).code == 0
    assert a.cli("lock", "release", "--stage", STAGE).code == 0
