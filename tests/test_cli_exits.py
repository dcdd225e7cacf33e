"""Commands raise and `main` maps: exit codes and the one `Error:` line, also under -q."""

from __future__ import annotations

from pathlib import Path

from conftest import base_env, run_cli

CHECKPOINT = b'{"version": 3, "checkpoint": {"stack": "organization/app/prod", "latest": {}}}\n'


def test_scan_quiet_keeps_its_error_line(tmp_path: Path) -> None:
    """`scan -q` prints nothing but the findings and the error that says why it exits 1."""
    folder = tmp_path / "work"
    (folder / "infra").mkdir(parents=True)
    (folder / "infra" / "prod.json").write_bytes(CHECKPOINT)
    env = base_env(tmp_path)
    for quiet in ((), ("-q",)):
        result = run_cli(*quiet, "scan", str(folder), cwd=tmp_path, env=env)
        assert result.code == 1, result.err
        assert result.out.splitlines() == [
            "infra/prod.json: Pulumi checkpoint (SST app state) in plaintext"
        ]
        assert result.err.splitlines() == [
            "Error: 1 plaintext SST file(s): encrypt them with `sst-vault migrate` (or delete "
            "them), and treat their secrets as leaked if they were pushed"
        ]


def test_clean_scan_exits_0_and_quiet_says_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "clean"
    folder.mkdir()
    (folder / "notes.json").write_text('{"a": 1}\n')
    env = base_env(tmp_path)
    result = run_cli("-q", "scan", str(folder), cwd=tmp_path, env=env)
    assert (result.code, result.out, result.err) == (0, "", "")
