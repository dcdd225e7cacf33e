"""`rotate`: a new data key (age) or the newest Fernet key for every stage's files."""

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
