"""`recipients list|add|remove`: who can open an age vault."""

from __future__ import annotations

import click

from vault.cli.context import Context, pass_context
from vault.cli.options import (
    lock_timeout_option,
    lock_ttl_option,
    maybe_locked,
    push_option,
    show_rotation,
)


@click.group("recipients")
def recipients_group() -> None:
    """List, add and remove the age public keys that can open the vault.

    \b
    Examples:
      sst-vault recipients add ci age1…     # then commit and push
      sst-vault recipients remove bob --push
    """


@recipients_group.command("list")
@pass_context
def list_cmd(ctx: Context) -> None:
    """Print each recipient's name and age public key.

    \b
    Example:
      sst-vault recipients list
    """
    from vault import team

    recipients = team.list_recipients(ctx.project())
    width = max((len(n) for n in recipients), default=0)
    for name, public in recipients.items():
        click.echo(f"{name:<{width}}  {public}")


@recipients_group.command("add")
@click.argument("name")
@click.argument("public_key", metavar="PUBKEY")
@pass_context
def add_cmd(ctx: Context, name: str, public_key: str) -> None:
    """Let NAME's age public key open the vault, and commit that.

    Re-wraps the vault's data key to every recipient (sst-vault.toml and data-key.age change
    together). Push afterwards; NAME can then `sst-vault key import` their secret key.

    \b
    Example:
      sst-vault recipients add bob age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
      sst-vault recipients add carol "$(cat ~/.ssh/id_ed25519.pub)"   # an SSH key works too

    PUBKEY is an age public key (age1…) or an ssh-ed25519 public key (the line of its .pub
    file); NAME then opens the vault with that SSH key's private key (unencrypted) in
    SST_VAULT_KEY, SST_VAULT_KEY_FILE or the keyring.
    """
    from vault import team

    change = team.add_recipient(ctx.project(), name, public_key)
    if change.commit:
        ctx.info(f"Added recipient {change.name}; committed {change.commit[:12]}.")
    else:
        ctx.info(f"Added recipient {change.name}.")
    ctx.info("Next: push it (git push); the data key id is unchanged.")


@recipients_group.command("remove")
@click.argument("name")
@push_option
@lock_timeout_option
@lock_ttl_option
@pass_context
def remove_cmd(
    ctx: Context, name: str, push: bool, lock_timeout: float, lock_ttl: int | None
) -> None:
    """Remove NAME, rotate the data key, re-seal every stage, and commit that.

    NAME's key opens nothing committed from then on; it still opens git history, so the
    secrets in it must be rotated (the command lists them). Pull before, push after; or
    pass --push, which does both under the deploy lock of every stage (see `rotate`).

    \b
    Example:
      sst-vault recipients remove bob --push
    """
    from vault import team

    report = maybe_locked(
        ctx,
        push,
        None,
        lambda project: team.remove_recipient(project, name),
        command=f"sst-vault recipients remove {name}",
        lock_timeout=lock_timeout,
        lock_ttl=lock_ttl,
    )
    show_rotation(ctx, report, pushed=push)
