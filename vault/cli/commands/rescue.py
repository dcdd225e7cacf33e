"""`rescue list|land|drop`: deploy states kept on a rescue ref because the branch refused them."""

from __future__ import annotations

import json
import sys

import click

from vault.cli.context import Context, pass_context
from vault.cli.options import push_timeout_option


@click.group("rescue")
def rescue_group() -> None:
    """List and land deploy states that `run` could not push to the branch.

    When a protection rule or hook refuses the push, the remote changed the same stage, or
    the push deadline passes, `run` pushes the state to refs/sst-vault/rescue/<app>/<stage>/<id>
    and keeps the stage's deploy lock, so nobody deploys from the older state on the branch.
    `land` puts it on the branch, deletes the rescue ref and releases that lock.

    \b
    Examples:
      sst-vault rescue list
      sst-vault rescue land --stage prod 3f2a9c1e04b7
      sst-vault rescue drop --stage prod 3f2a9c1e04b7   # the branch's state is the right one
    """


@rescue_group.command("list")
@click.option("--stage", help="Only this stage.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def list_cmd(ctx: Context, stage: str | None, as_json: bool) -> None:
    """List the rescued states waiting on the remote, oldest first.

    \b
    Example:
      sst-vault rescue list --stage prod
    """
    from vault import rescue
    from vault.printable import printable

    found = rescue.list_(ctx.project(), stage)
    if as_json:
        rows = [
            {
                "stage": r.stage,
                "id": r.id,
                "ref": r.ref,
                "commit": r.sha,
                "date": r.date,
                "subject": r.subject,
            }
            for r in found
        ]
        json.dump(rows, sys.stdout, indent=1)
        click.echo()
        return
    if not found:
        ctx.info("No rescued state is waiting")
        return
    for r in found:
        click.echo(
            f"{printable(r.stage, 80)} {printable(r.id, 40)} {printable(r.date, 40)} "
            f"{printable(r.subject, 120)}"
        )
        click.echo(f"  land: {printable(r.land_command())}")


@rescue_group.command("land")
@click.option("--stage", required=True, help="The stage whose rescued state to land.")
@click.argument("rescue_id", required=False)
@push_timeout_option
@pass_context
def land_cmd(ctx: Context, stage: str, rescue_id: str | None, push_timeout: float | None) -> None:
    """Put a rescued state on the branch, delete its rescue ref, release the stage's lock.

    RESCUE_ID is the last part of the rescue ref (or the whole ref); it may be left out when
    only one is waiting. Fetches, pulls, applies the rescued commits on top of the branch and
    pushes; refuses (and changes nothing) when the branch changed the same stage meanwhile.

    \b
    Example:
      sst-vault rescue land --stage prod 3f2a9c1e04b7
    """
    from vault import rescue

    landed = rescue.land(ctx.project(), stage, rescue_id, push_timeout=push_timeout, info=ctx.info)
    name = landed.rescued.stage
    if landed.already:
        ctx.info(f"{landed.rescued.id} was already on the branch")
    ctx.info(f"Deleted {landed.rescued.ref}")
    _report_lock(ctx, name, landed)


@rescue_group.command("drop")
@click.option("--stage", required=True, help="The stage whose rescued state to drop.")
@click.argument("rescue_id")
@pass_context
def drop_cmd(ctx: Context, stage: str, rescue_id: str) -> None:
    """Delete a rescued state from the remote (when the branch's state is the right one).

    A copy stays in this clone under refs/sst-vault/dropped/; the stage's lock is released
    when it is the one that kept this rescue.

    \b
    Example:
      sst-vault rescue drop --stage prod 3f2a9c1e04b7
    """
    from vault import rescue

    item, keep, result = rescue.drop(ctx.project(), stage, rescue_id)
    ctx.info(f"Deleted {item.ref} (a copy stays in this clone as {keep})")
    _report_lock(ctx, item.stage, result)


def _report_lock(ctx: Context, stage: str, result) -> None:  # result: vault.rescue.Landed
    if result.lock_released:
        ctx.info(f"Released the deploy lock of {stage} that kept it")
    elif result.lock_holder is not None:
        ctx.info(
            f"The deploy lock of {stage} is still held by {result.lock_holder.describe()}; "
            f"if that job is gone: `sst-vault lock break --stage {stage}`"
        )
