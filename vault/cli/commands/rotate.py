"""`rotate`: a new data key (age) or the newest Fernet key for every stage's files."""

from __future__ import annotations

import click

from vault.cli.commands.lock import (
    lock_timeout_option,
    lock_ttl_option,
    maybe_locked,
    push_option,
)
from vault.cli.context import Context, pass_context


@click.command("rotate")
@push_option
@lock_timeout_option
@lock_ttl_option
@pass_context
def rotate_cmd(ctx: Context, push: bool, lock_timeout: float, lock_ttl: int | None) -> None:
    """Re-seal every stage's vault files under a new key, and commit that.

    \b
    age:    a new random data key, wrapped to every recipient and signed into the key
            record by the old one; SST_VAULT_PIN stays, SST_VAULT_KEY_ID changes.
    fernet: put a new key first in SST_VAULT_KEY (old key on the next line), then rotate:
            every file moves to the new key; the old one still opens older revisions.

    Pull before, push after; or pass --push, which does both while holding the deploy lock
    of every stage, so no `run` re-seals one under the old key meanwhile. Git history keeps
    the old files, which the old key opens.

    \b
    Example:
      export SST_VAULT_KEY="$(sst-vault key generate --backend fernet)
      $SST_VAULT_KEY"
      sst-vault rotate --push --lock-timeout 600
    """
    from vault import team

    report = maybe_locked(
        ctx,
        push,
        None,
        team.rotate,
        command="sst-vault rotate",
        lock_timeout=lock_timeout,
        lock_ttl=lock_ttl,
    )
    show_rotation(ctx, report, pushed=push)


def show_rotation(ctx: Context, report, *, pushed: bool) -> None:  # vault.team.RotationReport
    for item in report.files:
        ctx.info(f"{item.stage} {item.kind}: re-sealed (serial {item.old_serial} -> {item.serial})")
    if report.backend == "fernet" and not report.files:
        ctx.info(
            f"Every file is already sealed under the newest key {report.key_id}: nothing to do. "
            "To rotate, put a new key (`sst-vault key generate --backend fernet`) first in "
            "SST_VAULT_KEY, keep the old one on the next line, and run rotate again."
        )
        click.echo(f"SST_VAULT_KEY_ID={report.key_id}")
        return
    if report.removed:
        ctx.info(f"Removed recipient {report.removed}; new data key {report.key_id}.")
    elif report.backend == "age":
        ctx.info(f"New data key {report.key_id} (was {report.old_key_id}).")
    else:
        ctx.info(f"Every file is now sealed under the Fernet key {report.key_id}.")
    if report.commit:
        after = " and pushed it." if pushed else ". Next: git push."
        ctx.info(f"Committed {report.commit[:12]}{after}")
    for warning in report.warnings:
        ctx.info(f"Warning: {warning}")
    if report.backend == "age":
        who = f"{report.removed}'s key" if report.removed else "the old data key"
        ctx.info(
            f"Git history still opens for {who}: every commit before this one holds state and "
            "secrets it can decrypt."
        )
        stages = ", ".join(report.stages) or "none yet"
        secrets = ", ".join(report.secret_stages)
        if report.removed:
            ctx.info(
                "Treat what they could read as known to them and rotate it: the SST passphrase "
                f"of every stage ({stages})"
                + (f", every `sst secret` value of {secrets}" if secrets else "")
                + ", and any credential kept in the state's resource outputs."
            )
        ctx.info(
            "Members and CI accept the new data key by its signed key record entry: "
            "SST_VAULT_PIN stays; only a CI that pins SST_VAULT_KEY_ID sets the value below."
        )
    else:
        ctx.info(
            "Once CI and every member use the new key first, the old key line can be dropped; "
            "CI: set the new SST_VAULT_KEY_ID below."
        )
    click.echo(f"SST_VAULT_KEY_ID={report.key_id}")
