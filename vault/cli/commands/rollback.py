"""`rollback`: restore an older state of a stage as a new commit."""

from __future__ import annotations

import click

from vault.cli.context import Context, pass_context
from vault.cli.options import (
    lock_timeout_option,
    lock_ttl_option,
    maybe_locked,
    push_option,
)


@click.command("rollback")
@click.argument("stage")
@click.option("--to", "rev", required=True, metavar="REV", help="The commit to go back to.")
@click.option("--prepare", "then_prepare", is_flag=True, help="Also run `prepare STAGE` after.")
@push_option
@lock_timeout_option
@lock_ttl_option
@pass_context
def rollback_cmd(
    ctx: Context,
    stage: str,
    rev: str,
    then_prepare: bool,
    push: bool,
    lock_timeout: float,
    lock_ttl: int | None,
) -> None:
    """Restore STAGE's state files as they were at REV, as a new commit.

    History is never rewritten: the old state is sealed again with serials above the
    current ones, so every clone treats it as the newest state. Kinds that did not exist
    at REV are left as they are. Then run `sst-vault prepare STAGE` (or pass --prepare).
    With --push it holds STAGE's deploy lock from the pull to the push.

    \b
    Example:
      sst-vault log prod
      sst-vault rollback prod --to 1a2b3c4d --push --prepare
    """
    from vault import rollback
    from vault.prepare import prepare

    report = maybe_locked(
        ctx,
        push,
        [stage],
        lambda project: rollback.rollback(project, stage, rev),
        command=f"sst-vault rollback {stage} --to {rev}",
        lock_timeout=lock_timeout,
        lock_ttl=lock_ttl,
    )
    project = ctx.project()
    for a in report.actions:
        if a.action == "restored":
            ctx.info(f"{stage} {a.kind}: restored serial {a.from_serial} as serial {a.serial}")
        elif a.action == "unchanged":
            ctx.info(f"{stage} {a.kind}: already as at {rev}")
        else:
            ctx.info(f"{stage} {a.kind}: not present at {rev}; left as it is")
    if report.commit is None:
        ctx.info(f"{stage} is already as it was at {rev}; no commit made")
    else:
        ctx.info(f"Committed {report.commit[:12]}" + (" and pushed it" if push else ""))
    if then_prepare:
        result = prepare(project, [report.stage])
        for action in result.actions:
            ctx.info(f"{action.stage} {action.kind}: {action.action} (serial {action.serial})")
    elif report.commit is not None:
        ctx.info(f"Next: `sst-vault prepare {report.stage}` to apply it to the SST home")
