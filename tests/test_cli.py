"""The CLI layer itself: lazy command table, help, exit codes, init's advice."""

from __future__ import annotations

import importlib
import os
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
