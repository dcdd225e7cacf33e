"""The CLI layer itself: lazy command table, help, exit codes, init's advice."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_project, run_cli

from vault.cli.main import COMMANDS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_table_matches_commands(name: str) -> None:
    """`--help` lists short help from a table (no imports): it must say what the command says."""
    module, attr, short_help, hidden = COMMANDS[name]
    command = getattr(importlib.import_module(f"vault.cli.commands.{module}"), attr)
    assert command.name == name
    assert command.get_short_help_str(limit=200) == short_help
    assert command.hidden == hidden


def test_help_loads_no_heavy_module() -> None:
    code = (
        "import sys; from vault.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('git', 'keyring', 'pyrage', 'cryptography',"
        " 'vault.commit', 'vault.prepare', 'vault.status')"
        " if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="


def test_the_console_script_flushes_what_it_printed_and_keeps_the_exit_code(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """`console()` ends the process without Python's shutdown: nothing printed may be lost
    (stdout is a pipe here, so fully buffered), and every exit code must come through."""
    help_ = run_cli("--help", cwd=tmp_path, env=env)
    assert help_.code == 0
    assert all(name in help_.out for name, spec in COMMANDS.items() if not spec[3])
    key = run_cli("key", "generate", cwd=tmp_path, env=env)
    assert key.code == 0 and key.out.startswith("AGE-SECRET-KEY-1") and key.out.endswith("\n")
    assert "age1" in key.err
    assert run_cli("prepare", "prod", cwd=tmp_path, env=env).code == 2  # no sst-vault.toml
    assert run_cli("--no-such-option", cwd=tmp_path, env=env).code == 2


def test_output_into_a_closed_pipe_ends_without_a_traceback(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written (`… | head -0`)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "vault", "--help"],
            cwd=tmp_path,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


@pytest.mark.parametrize(
    ("closed", "args", "code"),
    [(">&-", ("--help",), 0), ("2>&-", ("--help",), 0), ("2>&-", ("--no-such-option",), 2)],
)
def test_a_closed_standard_stream_keeps_the_exit_code(
    tmp_path: Path, env: dict[str, str], closed: str, args: tuple[str, ...], code: int
) -> None:
    """Started with fd 1 or 2 closed (cron, a supervisor, `… >&-`), Python has no sys.stdout or
    sys.stderr (None): the command's own exit code still comes through, with no traceback."""
    out = tmp_path / "other-stream"
    script = f'exec "$@" {closed} {"2" if closed == ">&-" else ""}>"{out}"'
    proc = subprocess.run(
        ["sh", "-c", script, "sh", sys.executable, "-m", "vault", *args],
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert proc.returncode == code
    assert "Traceback" not in out.read_text()


def test_unknown_command_is_a_usage_error(tmp_path: Path, env: dict[str, str]) -> None:
    result = run_cli("no-such-command", cwd=tmp_path, env=env)
    assert result.code == 2
    assert "No such command" in result.err


def test_init_prints_the_pin_and_no_spurious_warning(tmp_path: Path) -> None:
    project = make_project(tmp_path, name="p")
    key_id = project.cli("key", "id")
    assert key_id.code == 0, key_id.err
    # make_project ran init already; a second project shows init's own output.
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=other, env=project.env, check=True)
    (other / "sst.config.ts").write_text((project.root / "sst.config.ts").read_text())
    result = project.cli("init", "--no-keyring", cwd=other)
    assert result.code == 0, result.err
    assert "Warning" not in result.err
    assert result.out.startswith("SST_VAULT_PIN=svid1-")
    assert "SST_VAULT_KEY" in result.err
    assert project.key not in result.output


def _slow_git_log(tmp_path: Path, env: dict[str, str]) -> tuple[dict[str, str], Path]:
    """A `git` first on PATH that is the real one, except that every `git log` takes a second
    longer and notes when it started and when it ended."""
    marks = tmp_path / "git-log-marks"
    bin_dir = tmp_path / "slow-git-bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "git"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" log "*)\n'
        '  echo start >> "$GIT_LOG_MARKS"; sleep 1; "$REAL_GIT" "$@"; rc=$?\n'
        '  echo end >> "$GIT_LOG_MARKS"; exit $rc;;\n'
        "esac\n"
        'exec "$REAL_GIT" "$@"\n'
    )
    wrapper.chmod(0o755)
    slow = dict(
        env,
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        REAL_GIT=str(shutil.which("git")),
        GIT_LOG_MARKS=str(marks),
    )
    return slow, marks


@pytest.mark.parametrize("failure", ["no key", "a writer's garbage key record"])
def test_no_git_child_outlives_a_command_whose_trust_check_failed(
    tmp_path: Path, failure: str
) -> None:
    """`verify_record` reads the key record's history on a thread (two git children) while it
    loads the record; `console()` ends the process with os._exit. When the main thread fails
    first (no key: no git at all), the process must not exit with a `git log` still running."""
    from helpers import fresh_project

    project = fresh_project(tmp_path)
    env = dict(project.env)
    if failure == "no key":
        env.pop("SST_VAULT_KEY")
    else:  # a writer's push, through git alone
        (project.root / "infra" / "state" / "key-record.jsonl").write_text("not a record\n")
        project.git("add", "--", "infra/state/key-record.jsonl")
        project.git("commit", "-qm", "tweak", "--", "infra/state/key-record.jsonl")
    slow, marks = _slow_git_log(tmp_path, env)
    result = project.cli("key", "pin", env=slow)
    assert result.code in (1, 2), result.err
    assert "Traceback" not in result.err
    started = ended = 0
    if marks.exists():
        lines = marks.read_text().split()
        started, ended = lines.count("start"), lines.count("end")
    assert started == ended, f"{started - ended} `git log` still running after sst-vault exited"
