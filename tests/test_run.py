"""`sst-vault run`: the one CI step, against real bare remotes (file:// and git daemon)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sstfake
from conftest import VaultProject, make_project
from helpers import deploy, error_line, refusing_fork
from lockutil import BUMP, STAGE, Daemon, Team, bump_cmd, counter_of, make_team, run_all


@pytest.fixture
def daemon(tmp_path: Path, env: dict[str, str]):
    (tmp_path / "remotes").mkdir()  # make_team copies the bare remote in here
    server = Daemon(tmp_path / "remotes", env).start()
    yield server
    server.stop()


@pytest.fixture
def bump(tmp_path: Path) -> Path:
    script = tmp_path / "bump.py"
    script.write_text(BUMP)
    return script


def seeded_team(tmp_path: Path, daemon: Daemon | None = None) -> Team:
    """A remote whose prod state (counter 0) was deployed and pushed by a first runner."""
    return make_team(tmp_path, daemon, seeded=True)


def run_args(project: VaultProject, *args: str) -> list[str]:
    return [sys.executable, "-m", "vault", "--sst-home", str(project.home), "run", *args]


def remote_counter(team: Team, name: str = "check") -> int:
    """The counter as a fresh clone sees it after `prepare`: what was really pushed."""
    fresh = team.clone(name)
    result = fresh.cli("prepare", STAGE)
    assert result.code == 0, result.output
    return counter_of(fresh)


def assert_linear(team: Team) -> None:
    assert team.remote_git("rev-list", "--merges", "main") == ""


def test_concurrent_runners_over_git_daemon_never_lose_an_update(
    tmp_path: Path, daemon: Daemon, bump: Path
) -> None:
    team = seeded_team(tmp_path, daemon)
    runners = [team.clone(f"runner{i}") for i in range(3)]
    rounds = 2
    cmds = [
        (r, run_args(r, "--stage", STAGE, "--lock-timeout", "60", "--", *bump_cmd(r, bump)))
        for r in runners
    ]
    # Each runner deploys `rounds` times in a row, all runners at once.
    run_all([(r, [cmd] * rounds) for r, cmd in cmds], timeout=120)
    assert remote_counter(team) == len(runners) * rounds
    assert_linear(team)
    assert team.lock_refs() == []
    log = team.remote_git("log", "--format=%s", "main").splitlines()
    assert sum("sst-vault run --stage prod" in s for s in log) == len(runners) * rounds


def test_failing_command_keeps_its_code_and_its_partial_state(tmp_path: Path, bump: Path) -> None:
    team = seeded_team(tmp_path)
    a = team.clone("a")
    result = a.cli("run", "--stage", STAGE, "--", *bump_cmd(a, bump, 3))
    assert result.code == 3, result.output
    assert "committed" in result.err and "pushed" in result.err
    assert remote_counter(team) == 1  # the half-done deploy's state was not lost
    assert "exited 3" in team.remote_git("log", "-1", "--format=%s", "main")
    assert team.lock_refs() == []


def test_the_command_never_sees_the_secret_key(tmp_path: Path) -> None:
    project = make_project(tmp_path)  # no remote: local lock, nothing pushed
    probe = "import os; print('SST_VAULT_KEY' in os.environ)"
    assert "SST_VAULT_KEY" in project.env
    outside_ci = {k: v for k, v in project.env.items() if k != "CI"}  # CI needs a remote
    result = project.cli("run", "--stage", "dev", "--", sys.executable, "-c", probe, env=outside_ci)
    assert result.code == 0, result.output
    assert result.out.strip() == "False"
    assert "only guards this clone" in result.err and "not pushed" in result.err
    assert project.key not in result.output
    assert project.git("for-each-ref", "refs/sst-vault") == ""  # local lock released


def test_run_started_without_stdout_keeps_the_commands_code(tmp_path: Path) -> None:
    """`run` re-executes itself to drop the key from its environment; started with fd 1 closed
    (cron, a supervisor, `… >&-`), Python has no sys.stdout, and neither the re-exec nor the end
    of the process may trip over it."""
    project = make_project(tmp_path)
    outside_ci = {k: v for k, v in project.env.items() if k != "CI"}  # CI needs a remote
    err = tmp_path / "stderr"
    command = [*run_args(project, "--stage", "dev", "--"), sys.executable, "-c", "exit(3)"]
    proc = subprocess.run(
        ["sh", "-c", f'exec "$@" >&- 2>"{err}"', "sh", *command],
        cwd=project.root,
        env=outside_ci,
        timeout=120,
    )
    assert proc.returncode == 3, err.read_text()
    assert "Traceback" not in err.read_text()


def test_first_deploy_of_a_new_stage_is_committed_and_pushed(tmp_path: Path) -> None:
    team = make_team(tmp_path)
    a = team.clone("a")
    tests, home = str(Path(__file__).parent), str(a.home)
    write = (
        f"import sys; sys.path.insert(0, {tests!r}); import sstfake, pathlib; "
        f"sstfake.write_state(pathlib.Path({home!r}), 'demo-app', 'dev')"
    )
    result = a.cli("run", "--stage", "dev", "--", sys.executable, "-c", write)
    assert result.code == 0, result.output
    files = team.remote_git("ls-tree", "-r", "--name-only", "main", "infra/state").split()
    assert "infra/state/app/dev.json.vault" in files
    assert "infra/state/passphrase/dev.json.vault" in files


def test_a_command_that_leaves_no_state_commits_nothing(tmp_path: Path) -> None:
    team = make_team(tmp_path)
    a = team.clone("a")
    before = team.remote_git("rev-parse", "main")
    result = a.cli("run", "--stage", "dev", "--", sys.executable, "-c", "pass")
    assert result.code == 0, result.output
    assert team.remote_git("rev-parse", "main") == before and team.lock_refs() == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_reaches_the_command_and_the_state_is_still_committed(
    tmp_path: Path, bump: Path, sig: signal.Signals
) -> None:
    team = seeded_team(tmp_path)
    a = team.clone("a")
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        run_args(a, "--stage", STAGE, "--", *bump_cmd(a, bump, 0, str(ready))),
        cwd=a.root,
        env=a.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 42, err  # the command's own code after its signal handler
    assert f"{sig.name} passed to the command" in err
    assert remote_counter(team) == 1
    assert team.lock_refs() == []


def test_kill_9_leaves_the_lock_which_break_clears_without_losing_pushes(
    tmp_path: Path, bump: Path
) -> None:
    team = seeded_team(tmp_path)
    a, b = team.clone("a"), team.clone("b")
    assert b.cli("run", "--stage", STAGE, "--", *bump_cmd(b, bump)).code == 0  # counter 1
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        run_args(a, "--stage", STAGE, "--", *bump_cmd(a, bump, 0, str(ready))),
        cwd=a.root,
        env=a.env,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    os.kill(int(ready.read_text()), signal.SIGKILL)  # the orphaned command, like a dead VM

    status = b.cli("lock", "status", "--stage", STAGE)
    assert status.code == 0 and "locked by" in status.out and " ago)" in status.out
    held = b.cli("run", "--stage", STAGE, "--", *bump_cmd(b, bump))
    assert held.code == 1 and "is held by" in error_line(held.err)
    assert "broken" not in held.err
    broken = b.cli("lock", "break", "--stage", STAGE)
    assert broken.code == 0 and "held by" in broken.err
    assert b.cli("run", "--stage", STAGE, "--", *bump_cmd(b, bump)).code == 0
    assert remote_counter(team) == 2  # both pushed runs survive; the killed one never pushed
    assert team.lock_refs() == []


def test_push_race_on_another_stage_is_rebased(tmp_path: Path, bump: Path) -> None:
    team = seeded_team(tmp_path)
    a, b = team.clone("a"), team.clone("b")
    sstfake.write_state(b.home, b.app, "dev")
    assert b.cli("commit", "dev").code == 0  # committed, pushed during a's deploy
    racer = f"import subprocess; subprocess.run(['git', '-C', {str(b.root)!r}, 'push', '-q'])"
    cmd = ["sh", "-c", f'{" ".join(bump_cmd(a, bump))} && {sys.executable} -c "{racer}"']
    result = a.cli("run", "--stage", STAGE, "--", *cmd)
    assert result.code == 0, result.output
    assert_linear(team)
    files = team.remote_git("ls-tree", "-r", "--name-only", "main", "infra/state").split()
    assert "infra/state/app/dev.json.vault" in files
    assert remote_counter(team) == 1 and team.lock_refs() == []


def test_push_race_on_the_same_stage_is_refused_and_keeps_the_commit(
    tmp_path: Path, bump: Path
) -> None:
    team = seeded_team(tmp_path)
    a, b = team.clone("a"), team.clone("b")
    assert b.cli("prepare", STAGE).code == 0
    deploy(b, STAGE, counter=100)
    assert b.cli("commit", STAGE).code == 0
    racer = f"import subprocess; subprocess.run(['git', '-C', {str(b.root)!r}, 'push', '-q'])"
    cmd = ["sh", "-c", f'{" ".join(bump_cmd(a, bump))} && {sys.executable} -c "{racer}"']
    result = a.cli("run", "--stage", STAGE, "--", *cmd)
    assert result.code == 1
    line = error_line(result.err)
    assert "changed infra/state/" in line and "diverged" in line and "is kept" in line
    assert "exited 0" in a.git("log", "-1", "--format=%s")  # a's state is in its local commit
    head = a.git("rev-parse", "HEAD").strip()
    rescue = f"refs/sst-vault/rescue/demo-app/prod/{head[:12]}"
    assert f"saved on origin as {rescue}" in line  # and off the (disposable) runner too
    assert f"sst-vault rescue land --stage prod {head[:12]}" in line
    assert team.remote_git("rev-parse", rescue).strip() == head
    assert a.git("status", "--porcelain", "--untracked-files=no") == ""
    assert remote_counter(team) == 100
    # The stage stays locked (nobody deploys from counter 100 unaware), and says why.
    assert "stays held" in result.err
    status = b.cli("lock", "status", "--stage", STAGE)
    assert f"its state rescued to {rescue}" in status.out and "rescued state waiting" in status.out
    # Landing it would undo b's deploy: refused, nothing changed; dropping it frees the stage.
    land = b.cli("rescue", "land", "--stage", STAGE)
    assert land.code == 1 and "landing it would undo" in error_line(land.err)
    assert team.remote_git("rev-parse", rescue).strip() == head
    dropped = b.cli("rescue", "drop", "--stage", STAGE, head[:12])
    assert dropped.code == 0, dropped.output
    assert "Released the deploy lock" in dropped.err
    assert team.lock_refs() == []
    assert b.git("rev-parse", f"refs/sst-vault/dropped/demo-app/prod/{head[:12]}").strip() == head


def test_commit_push_uses_the_same_rebase_logic(tmp_path: Path) -> None:
    team = seeded_team(tmp_path)
    a, b = team.clone("a"), team.clone("b")
    sstfake.write_state(b.home, b.app, "dev")
    assert b.cli("commit", "dev", "--push").code == 0
    assert a.cli("prepare", STAGE).code == 0
    deploy(a, STAGE, counter=5)
    result = a.cli("commit", STAGE, "--push")
    assert result.code == 0, result.output
    assert_linear(team)
    assert remote_counter(team) == 5


def test_a_push_that_cannot_start_keeps_the_commit_and_the_lock(tmp_path: Path, bump: Path) -> None:
    """The deploy ran and its state is committed, but the `git push` of the branch cannot start
    (fork refused at a process limit): as for an unreachable remote, the state is only in this
    clone, so the deploy lock stays held and the message says so; releasing it let the next
    runner deploy from the branch's older state while this clone was thrown away."""
    team = seeded_team(tmp_path)
    a = team.clone("a")
    was = team.remote_git("rev-parse", "main")
    env = refusing_fork(a.env, tmp_path / "refuse-push", "git", "push", ":refs/heads/main")
    result = a.cli("run", "--stage", STAGE, "--", *bump_cmd(a, bump), env=env)
    assert result.code == 1, result.output
    line = error_line(result.err)
    assert "pids.max" in line and "stays held" in line, line
    assert "exited 0" in a.git("log", "-1", "--format=%s")  # the state is in the local commit
    assert team.remote_git("rev-parse", "main") == was
    assert "(this clone)" in a.cli("lock", "status", "--stage", STAGE).out
    a.git("push", "-q", "origin", "main")
    assert a.cli("lock", "release", "--stage", STAGE).code == 0
    assert remote_counter(team) == 1


def test_a_commit_that_fails_after_the_command_keeps_the_lock(tmp_path: Path, bump: Path) -> None:
    """The command deployed; its commit failed (here its `git commit` cannot start: a process
    limit). A CI runner's SST home goes with it, so the stage stays locked: nobody deploys from
    the older state on the branch until the state is committed from there."""
    team = seeded_team(tmp_path)
    a = team.clone("a")
    was = team.remote_git("rev-parse", "main")
    env = refusing_fork(a.env, tmp_path / "refuse-commit", "git", "commit", "--no-verify")
    result = a.cli("run", "--stage", STAGE, "--", *bump_cmd(a, bump), env=env)
    assert result.code == 1, result.output
    line = error_line(result.err)
    assert "pids.max" in line and f"still in {a.home / 'state'}" in line, line
    assert f"lock release --stage {STAGE}" in line, line
    assert "stays held" in result.err
    assert team.remote_git("rev-parse", "main") == was
    assert "(this clone)" in a.cli("lock", "status", "--stage", STAGE).out
    # The hint, followed: the deployed state lands, then the lock goes.
    assert a.cli("commit", STAGE, "--push").code == 0
    assert a.cli("lock", "release", "--stage", STAGE).code == 0
    assert remote_counter(team) == 1 and team.lock_refs() == []


@pytest.mark.parametrize("transport", ["file", "git-daemon"])
def test_unreachable_remote_on_push_keeps_the_commit_and_reports_the_lock(
    tmp_path: Path, bump: Path, env: dict[str, str], transport: str
) -> None:
    daemon = None
    if transport == "git-daemon":
        (tmp_path / "remotes").mkdir()
        daemon = Daemon(tmp_path / "remotes", env).start()
    try:
        team = seeded_team(tmp_path, daemon)
        a = team.clone("a")
        hidden = tmp_path / "remotes" / "hidden.git"
        if daemon:  # the network goes down while the deploy runs
            assert daemon.proc is not None
            cut = f"import os; os.killpg({daemon.proc.pid}, 9)"
        else:
            cut = f"import os; os.rename({str(team.bare)!r}, {str(hidden)!r})"
        cmd = ["sh", "-c", f'{" ".join(bump_cmd(a, bump))} && {sys.executable} -c "{cut}"']
        result = a.cli("run", "--stage", STAGE, "--", *cmd)
        assert result.code == 1
        line = error_line(result.err)
        assert "committed locally as" in line and "stays held" in line
        assert "git fetch from origin failed" in line or "git push to origin failed" in line
        assert "exited 0" in a.git("log", "-1", "--format=%s")
        if daemon:  # the network is back: the lock is honestly still there
            daemon.start()
        else:
            hidden.rename(team.bare)
        assert "(this clone)" in a.cli("lock", "status", "--stage", STAGE).out
        assert a.cli("lock", "release", "--stage", STAGE).code == 0
        a.git("push", "-q", "origin", "main")
        assert remote_counter(team) == 1
    finally:
        if daemon:
            daemon.stop()


def test_usage_errors_release_the_lock(tmp_path: Path) -> None:
    team = make_team(tmp_path)
    a = team.clone("a")
    missing = a.cli("run", "--stage", STAGE, "--", "no-such-command-xyz")
    assert missing.code == 2 and "cannot run 'no-such-command-xyz'" in error_line(missing.err)
    assert team.lock_refs() == []
    assert a.cli("run", "--stage", "bad/stage", "--", "true").code == 2
    assert a.cli("run", "--stage", STAGE).code == 2


def test_a_command_that_cannot_start_is_a_limit_not_a_usage_error(tmp_path: Path) -> None:
    """fork refused for the command itself (EAGAIN at pids.max) says what to do about the
    limit and exits 1, like every refused process; it was exit 2, "check the command"."""
    team = make_team(tmp_path)
    a = team.clone("a")
    env = refusing_fork(a.env, tmp_path / "refuse-true", "true")
    result = a.cli("run", "--stage", STAGE, "--", "true", env=env)
    assert result.code == 1, result.output
    line = error_line(result.err)
    assert "cannot run 'true'" in line and "pids.max" in line, line
    assert "check the command" not in line
    assert team.lock_refs() == []


def test_no_push_commits_locally(tmp_path: Path, bump: Path) -> None:
    team = seeded_team(tmp_path)
    a = team.clone("a")
    before = team.remote_git("rev-parse", "main")
    result = a.cli("run", "--stage", STAGE, "--no-push", "--", *bump_cmd(a, bump))
    assert result.code == 0, result.output
    assert team.remote_git("rev-parse", "main") == before
    assert "exited 0" in a.git("log", "-1", "--format=%s")
    data = json.loads(a.state_file("app", STAGE).read_text())
    assert data["counter"] == 1


def test_a_signal_while_waiting_for_the_lock_stops_cleanly(tmp_path: Path) -> None:
    team = make_team(tmp_path)
    a, b = team.clone("a"), team.clone("b")
    assert a.cli("lock", "acquire", "--stage", STAGE).code == 0
    proc = subprocess.Popen(
        run_args(b, "--stage", STAGE, "--lock-timeout", "60", "--", "true"),
        cwd=b.root,
        env=b.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)  # b is now polling with backoff
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "waiting for the deploy lock" in err and "interrupted by SIGTERM" in err
    assert "(this clone)" in a.cli("lock", "status", "--stage", STAGE).out  # a's lock untouched


def test_a_vault_failure_after_the_command_says_where_the_state_is(tmp_path: Path) -> None:
    team = seeded_team(tmp_path)
    a = team.clone("a")
    path = a.state_file("app", STAGE)
    corrupt = f"open({str(path)!r}, 'w').write('{{not json')"
    before = team.remote_git("rev-parse", "main")
    result = a.cli("run", "--stage", STAGE, "--", sys.executable, "-c", corrupt)
    assert result.code == 1
    line = error_line(result.err)
    assert "is not valid JSON" in line and f"still in {a.home / 'state'}" in line
    assert "sst-vault commit prod --push" in line
    assert path.read_text() == "{not json"  # left for the user to fix, not thrown away
    assert team.remote_git("rev-parse", "main") == before and team.lock_refs() == []
