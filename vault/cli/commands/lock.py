"""`lock acquire|release|status|break`: the cross-machine deploy lock of a stage."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import asdict

import click

from vault.cli.context import Context, pass_context
from vault.cli.options import lock_timeout_option, lock_ttl_option

stage_option = click.option("--stage", required=True, help="The SST stage the lock guards.")


@click.group("lock")
def lock_group() -> None:
    """The deploy lock: a ref on the git remote that one runner at a time holds.

    `sst-vault run` takes and releases it for you; use these to inspect it, to hold it over
    several CI steps, or to remove one left behind by a killed job.

    \b
    Examples:
      sst-vault lock status --stage prod    # who holds it, since when, running what
      sst-vault lock break --stage prod     # after the holder's job was killed
    """


def _open(ctx: Context, stage: str):  # -> vault.lock.DeployLock
    from vault.lock import DeployLock

    lock = DeployLock(ctx.project(), stage)
    if lock.local_only:
        ctx.info(f"Warning: {lock.local_warning()}")
    return lock


@lock_group.command("acquire")
@stage_option
@lock_timeout_option
@lock_ttl_option
@pass_context
def acquire_cmd(ctx: Context, stage: str, lock_timeout: float, lock_ttl: int | None) -> None:
    """Take the deploy lock of STAGE for this clone, until `lock release`.

    \b
    Example:
      sst-vault lock acquire --stage prod --lock-timeout 600
      ... several deploy steps, each with `sst-vault run --no-lock` ...
      sst-vault lock release --stage prod
    """
    from vault.errors import LockHeldError, VaultError
    from vault.lock import DEFAULT_TTL

    lock = _open(ctx, stage)
    mine = lock.held_here()
    if mine and lock.current_sha() == mine:
        ctx.info(f"This clone already holds the deploy lock of {lock.name}")
        return
    try:
        info = lock.acquire(
            timeout=lock_timeout,
            ttl=DEFAULT_TTL if lock_ttl is None else lock_ttl,
            command="sst-vault lock acquire",
            on_wait=lambda h: ctx.info(f"Waiting for the deploy lock: {h.describe()}"),
            on_takeover=lambda h: ctx.info(f"Took over the expired lock of {h.describe()}"),
        )
    except LockHeldError:
        raise
    except BaseException:
        # Our lock commit may have got in before the failure (an interrupt, a git that could
        # not start to confirm it): take it back, as `run` does, or it blocks the stage.
        with contextlib.suppress(VaultError, OSError):  # the first error is the one to report
            lock.abandon()
        raise
    ctx.info(f"Acquired the deploy lock of {lock.name} ({info.sha[:12]})")


@lock_group.command("release")
@stage_option
@pass_context
def release_cmd(ctx: Context, stage: str) -> None:
    """Release the deploy lock of STAGE that this clone holds (anyone else's is refused).

    \b
    Example:
      sst-vault lock acquire --stage prod && sst deploy --stage prod
      sst-vault lock release --stage prod
    """
    lock = _open(ctx, stage)
    if lock.release():
        ctx.info(f"Released the deploy lock of {lock.name}")
    else:
        ctx.info(f"The deploy lock of {lock.name} was already gone (broken by someone)")


@lock_group.command("status")
@stage_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def status_cmd(ctx: Context, stage: str, as_json: bool) -> None:
    """Show who holds the deploy lock of STAGE, since when, running what.

    Also lists rescued states of STAGE waiting on the remote (see `sst-vault rescue`).

    \b
    Examples:
      sst-vault lock status --stage prod
      sst-vault lock status --stage prod --json | jq .held
    """
    lock = _open(ctx, stage)
    holder = lock.status()
    rescues = lock.rescues()
    if as_json:
        data: dict[str, object] = {"stage": stage, "ref": lock.ref, "held": holder is not None}
        if holder:
            data.update(
                asdict(holder),
                age_seconds=int(holder.age()),
                expired=holder.expired(),
                held_here=lock.held_here() == holder.sha,
            )
        data["rescues"] = [{"ref": ref, "commit": sha} for ref, sha in rescues]
        json.dump(data, sys.stdout, indent=1)
        click.echo()
        return
    if holder is None:
        click.echo(f"{lock.name}: not locked")
    else:
        here = " (this clone)" if lock.held_here() == holder.sha else ""
        click.echo(f"{lock.name}: locked by {holder.describe()}{here}")
    for line in _rescue_lines(lock, rescues):
        click.echo(line)


def _rescue_lines(lock, rescues: list[tuple[str, str]]) -> list[str]:
    from vault.printable import printable

    return [
        f"{lock.name}: rescued state waiting on {printable(ref)}: land it with "
        f"`sst-vault rescue land --stage {lock.stage} {printable(ref.rsplit('/', 1)[1], 40)}`"
        for ref, _sha in rescues
    ]


@lock_group.command("break")
@stage_option
@pass_context
def break_cmd(ctx: Context, stage: str) -> None:
    """Remove the deploy lock of STAGE whoever holds it (for a job that was killed).

    Make sure its holder is gone first: two deploys at once can corrupt the state. Says
    whether the holder's state may be unsaved, and names a rescued state still waiting.

    \b
    Example:
      sst-vault lock status --stage prod    # check the holder's CI run is really gone
      sst-vault lock break --stage prod
    """
    lock = _open(ctx, stage)
    holder = lock.break_()
    rescues = lock.rescues()
    if holder is None:
        ctx.info(f"{lock.name} was not locked")
    else:
        ctx.info(f"Broke the deploy lock of {lock.name}, held by {holder.describe()}")
        if not holder.rescue:
            ctx.info(
                "Warning: the holder's state may be unsaved: if its job was killed while "
                "deploying, what it deployed was never committed (check its CI run, then "
                "`sst refresh` before the next deploy)"
            )
    for line in _rescue_lines(lock, rescues):
        ctx.info(line + " (before the next deploy, or it deploys from an older state)")
