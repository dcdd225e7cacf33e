"""`status`: how each stage's home files compare with the repo."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from vault.cli.context import Context, pass_context
from vault.errors import RefusedError
from vault.paths import home_from_sst_binary, same_folder


@click.command("status")
@click.argument("stages", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--verify", is_flag=True, help="Decrypt every vault file too; exit 1 if one does not open."
)
@pass_context
def status_cmd(ctx: Context, stages: tuple[str, ...], as_json: bool, verify: bool) -> None:
    """Show, per stage and kind: in sync, home ahead, repo ahead, conflict, … or missing.

    \b
    in sync      home, vault file and last sync agree, and git has the file committed
    home ahead   deployed or `sst secret set` here, not committed: run `commit`
    repo ahead   someone committed a newer state (or re-sealed it): run `prepare`
    repo behind  the vault file has a lower serial than last synced here: `git pull`
    diverged     both changed since the last sync: see README, "Diverged state"
    uncommitted  sealed in the work tree, not committed to git: run `commit` again
    conflict     git stopped a merge or rebase on it: `sst-vault resolve STAGE --ours|--theirs`
    missing      neither the repo nor this SST home has the stage
    damaged      (--verify only) the vault file does not open: restore it from git

    Without --verify, status reads each vault file's clear header (serial, content
    fingerprint, key id), fingerprints the SST home's file, compares both with the sync
    record of this home, and asks git's index about conflicts and uncommitted files. The
    header is authenticated only together with the body, so a body damaged behind an intact
    header shows as in sync until --verify (which decrypts every file), prepare or commit
    meets it. A header whose serial disagrees with the sync record is never in sync.

    \b
    Examples:
      sst-vault status --json | jq '.[] | select(.state != "in sync")'
      sst-vault status --verify prod
    """
    from vault.status import DAMAGED, status

    project = ctx.project()
    rows = status(project, stages, verify=verify)
    if ctx.verbose:
        ctx.info(f"SST home: {project.home.root}")
        reported = home_from_sst_binary()
        if reported is not None and not same_folder(reported, project.home.root):
            ctx.info(f"Warning: `sst version --verbose` uses {reported} as its home")
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
    elif not rows:
        ctx.info("No stages found in the repo or the SST home.")
    else:
        width = max(len(r.stage) for r in rows)
        for r in rows:
            serial = f"repo serial {r.repo_serial}" if r.repo_serial is not None else "not in repo"
            synced = f", synced {r.synced_serial}" if r.synced_serial is not None else ""
            problem = f": {r.problem}" if r.problem else ""
            click.echo(
                f"{r.stage:<{width}}  {r.kind:<10}  {r.state:<10}  ({serial}{synced}){problem}"
            )
    damaged = [r for r in rows if r.state == DAMAGED]
    if damaged:
        names = ", ".join(f"{r.stage} {r.kind}" for r in damaged)
        raise RefusedError(
            f"{len(damaged)} vault file(s) do not open ({names})",
            "restore them from git (`sst-vault log STAGE` lists good versions), or commit "
            "again from an SST home that holds the state",
        )
