"""`doctor`: check the setup and say what to fix."""

from __future__ import annotations

import click

from vault.cli.context import Context, pass_context
from vault.errors import ReportedFailure


@click.command("doctor")
@pass_context
def doctor_cmd(ctx: Context) -> None:
    """Check config, key sources, keyring, SST home, git setup, remote and deploy locks.

    One line per check: `ok`, `warn` (worth fixing) or `fail` (prepare/commit cannot work),
    with a hint. Key sources are named, never printed. Exits 1 when any check fails.
    When `sst` is on PATH, doctor runs `sst version --verbose` to compare homes; SST
    itself then creates `<home>/bin` if it was missing.

    \b
    Example:
      sst-vault doctor || echo "fix the fail lines first"
    """
    from vault import doctor

    checks = doctor.run(ctx.project_dir, ctx.sst_home)
    for check in checks:
        click.echo(check.line())
    if not doctor.healthy(checks):
        raise ReportedFailure()
