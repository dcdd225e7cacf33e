"""`resolve`: end a merge conflict on a stage's vault files by keeping one side whole."""

from __future__ import annotations

import click

from vault.cli.context import Context, pass_context


@click.command("resolve")
@click.argument("stage")
@click.option("--ours", "side", flag_value="ours", help="Keep HEAD's side (yours in a merge).")
@click.option(
    "--theirs",
    "side",
    flag_value="theirs",
    help="Keep the side being merged in (MERGE_HEAD; in a rebase, your commit being replayed).",
)
@pass_context
def resolve_cmd(ctx: Context, stage: str, side: str | None) -> None:
    """Keep one side of a merge conflict on STAGE's vault files, re-sealed at a newer serial.

    Every kind of the stage (passphrase, state, secrets) comes from the chosen side's commit,
    so one deploy's files stay together. Each file whose sides differ is re-sealed at
    max(ours, theirs)+1, so every clone sees a newer state. The files are staged; finish the
    merge with `git commit` (or `git rebase --continue`). Sides are named as in
    `git checkout --ours/--theirs`.

    \b
    Example (after `git pull` stopped on infra/state/app/prod.json.vault):
      sst-vault resolve prod --theirs && git commit --no-edit
      sst-vault prepare prod            # the kept state into this SST home
    """
    from vault import resolve

    if side is None:
        raise click.UsageError("pass --ours or --theirs")
    project = ctx.project()
    report = resolve.resolve(project, stage, side)
    for item in report.files:
        serial = f" (serial {item.serial})" if item.serial is not None else ""
        ctx.info(f"{stage} {item.kind}: {item.action} from {report.rev}{serial}")
    ctx.info(
        f"Kept {side} for {stage}; finish with `git commit` (or `git rebase --continue`), then "
        f"`sst-vault prepare {stage}`; redeploy if the dropped side created resources"
    )
