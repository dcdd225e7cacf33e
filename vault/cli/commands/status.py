"""`status`: how each stage's home files compare with the repo."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from vault import sync
from vault.cli.context import Context, pass_context
from vault.paths import home_from_sst_binary, same_folder


@click.command("status")
@click.argument("stages", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def status_cmd(ctx: Context, stages: tuple[str, ...], as_json: bool) -> None:
    """Show, per stage and kind: in sync, home ahead, repo ahead, diverged or missing.

    \b
    home ahead   deployed or `sst secret set` here, not committed: run `commit`
    repo ahead   someone committed a newer state: run `prepare`
    diverged     both changed since the last sync: see README, "Diverged state"

    \b
    Example:
      sst-vault status --json | jq '.[] | select(.state != "in sync")'
    """
    project = ctx.project()
    rows = sync.status(project, stages)
    if ctx.verbose:
        ctx.info(f"SST home: {project.home.root}")
        reported = home_from_sst_binary()
        if reported is not None and not same_folder(reported, project.home.root):
            ctx.info(f"Warning: `sst version --verbose` uses {reported} as its home")
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    if not rows:
        ctx.info("No stages found in the repo or the SST home.")
        return
    width = max(len(r.stage) for r in rows)
    for r in rows:
        serial = f"repo serial {r.repo_serial}" if r.repo_serial is not None else "not in repo"
        synced = f", synced {r.synced_serial}" if r.synced_serial is not None else ""
        click.echo(f"{r.stage:<{width}}  {r.kind:<10}  {r.state:<10}  ({serial}{synced})")
