"""`prepare`: decrypt a stage's state into the SST home before `sst deploy`."""

from __future__ import annotations

import click

from vault.cli.context import Context, pass_context


@click.command("prepare")
@click.argument("stages", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every stage that has vault files.")
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite uncommitted home changes (a backup is kept) or go back to an older serial.",
)
@pass_context
def prepare_cmd(ctx: Context, stages: tuple[str, ...], all_: bool, force: bool) -> None:
    """Decrypt STAGE's state, passphrase and secrets into the SST home.

    Files are written 0600 and replaced atomically; nothing is written unless every file
    opens. Refuses to overwrite home changes that were never committed, and to go back to an
    older serial, unless --force.

    \b
    Example:
      sst-vault prepare prod && sst deploy --stage prod
    """
    from vault.prepare import prepare
    from vault.stagefiles import resolve_stages

    project = ctx.project()
    names = resolve_stages(project, stages, all_, source="repo")
    report = prepare(project, names, force=force)
    for action in report.actions:
        line = f"{action.stage} {action.kind}: {action.action} (serial {action.serial})"
        if action.backup:
            line += f", previous home file kept in {action.backup}"
        ctx.info(line)
