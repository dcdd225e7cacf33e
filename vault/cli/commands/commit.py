"""`commit`: encrypt a stage's state into the repo after `sst deploy`."""

from __future__ import annotations

import click

from vault.cli.context import Context, pass_context
from vault.cli.options import push_timeout_option


@click.command("commit")
@click.argument("stages", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every stage found in the SST home.")
@click.option("-m", "--message", help="Commit message (a summary line is added below it).")
@click.option("--push", is_flag=True, help="Push the commit to the configured remote.")
@push_timeout_option
@click.option(
    "--force",
    is_flag=True,
    help="Commit even though the repo holds a newer state than this home started from.",
)
@pass_context
def commit_cmd(
    ctx: Context,
    stages: tuple[str, ...],
    all_: bool,
    message: str | None,
    push: bool,
    push_timeout: float | None,
    force: bool,
) -> None:
    """Encrypt STAGE's SST files into the repo and commit exactly those files.

    Validates the state first, verifies the encrypted file opens to the same bytes, and
    stages only vault files and sst-vault's own files (never `git add .`). Makes no commit
    when nothing changed.

    \b
    Example:
      sst deploy --stage prod && sst-vault commit prod --push
    """
    from vault.commit import commit
    from vault.stagefiles import resolve_stages

    project = ctx.project()
    names = resolve_stages(project, stages, all_, source="home")
    report = commit(
        project, names, message=message, push=push, force=force, push_timeout=push_timeout
    )
    for action in report.actions:
        if action.action != "absent":
            ctx.info(f"{action.stage} {action.kind}: {action.action} (serial {action.serial})")
    if report.commit:
        ctx.info(f"Committed {report.commit[:12]}" + (" and pushed" if report.pushed else ""))
    else:
        ctx.info("Nothing changed; no commit made.")
        if report.pushed and report.pushed_earlier:
            ctx.info(f"Pushed {report.pushed_earlier} earlier commit(s) the remote did not have.")
        elif report.pushed:
            ctx.info("Nothing to push: the remote already has every commit.")
