"""The secret variables' hand-over when `run` re-executes itself (vault/keyenv.py)."""

from __future__ import annotations

from conftest import make_project


def test_run_refuses_a_key_variable_too_large_to_hand_over(tmp_path):
    """The re-exec passes the secrets through a pipe that nobody reads before the exec: a value
    over its buffer would block forever. It is refused at once, and the command never runs."""
    project = make_project(tmp_path)
    marker = tmp_path / "ran"
    env = dict(project.env, SST_VAULT_KEY=project.key + "\n#" + "x" * 70_000)
    result = project.cli(
        "run", "--stage", "dev", "--no-lock", "--no-push", "--", "touch", str(marker), env=env
    )
    assert result.code == 2, result.output
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: $SST_VAULT_KEY"), result.err
    assert "KiB" in lines[0] and "x" * 20 not in result.output
    assert not marker.exists()
