"""`log`: the history of a stage's state in git."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from vault.cli.context import Context, pass_context


@click.command("log")
@click.argument("stage")
@click.option("-n", "--max-count", type=click.IntRange(min=1), help="Show at most N commits.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def log_cmd(ctx: Context, stage: str, max_count: int | None, as_json: bool) -> None:
    """List the commits that changed STAGE's vault files, newest first.

    Each line: commit, date, author, the app state's serial and resource count at that
    commit (decrypted: needs the key), and which kinds changed.

    \b
    Example:
      sst-vault log prod -n 5
      sst-vault rollback prod --to 1a2b3c4d
    """
    from vault import log

    project = ctx.project()
    report = log.log(project, stage, max_count)
    if report.key_problem:
        ctx.info(f"Warning: resource counts not shown: {report.key_problem}")
    if report.hidden:
        ctx.info(f"Warning: not shown, commit {report.hidden}")
    if as_json:
        click.echo(json.dumps([asdict(e) for e in report.entries], indent=2))
        return
    if not report.entries:
        ctx.info(f"No commits touch the vault files of {stage}.")
        return
    for e in report.entries:
        serial = f"serial {e.serial}" if e.serial is not None else "no app state"
        count = f"{e.resources} resources" if e.resources is not None else "? resources"
        kinds = ", ".join(
            f"{kind} {status}" if status != "changed" else kind
            for kind, status in e.changed.items()
        )
        click.echo(
            f"{e.commit[:12]}  {e.date[:19].replace('T', ' ')}  {e.author}  {serial}  "
            f"{count}  {kinds}"
        )
