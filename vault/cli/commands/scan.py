"""`scan`: find plaintext SST state in the work tree or in git history."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vault.cli.context import Context, pass_context


@click.command("scan")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--history", is_flag=True, help="Scan every file version of every commit.")
@pass_context
def scan_cmd(ctx: Context, path: Path | None, history: bool) -> None:
    """Find plaintext SST state, passphrases and secret files; exit 1 naming each.

    Without --history: the files git would commit under PATH (default: here), tracked or
    not ignored; outside git, every file. With --history: every file version of every
    commit on any ref, each named with its commit. Works in any repository, with or
    without sst-vault.toml. Exit 0 when nothing is found.

    \b
    Examples:
      sst-vault scan                 # in a pre-commit hook
      sst-vault scan --history       # after `migrate`, before and after a purge
    """
    from vault import scan

    where = path or Path.cwd()
    findings = scan.scan_history(where) if history else scan.scan_tree(where)
    for finding in findings:
        click.echo(finding.line())
    if findings:
        what = "file version(s) in history" if history else "file(s)"
        ctx.info(
            f"Error: {len(findings)} plaintext SST {what}: encrypt them with "
            "`sst-vault migrate` (or delete them), and treat their secrets as leaked"
            + (" if they were pushed" if not history else "")
        )
        sys.exit(1)
    ctx.info("No plaintext SST state found" + (" in history." if history else "."))
