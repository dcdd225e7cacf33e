"""Options and helpers that several commands share, so no command imports from another.

The lock and push options are the same for `run`, `commit --push`, `rescue land`, `lock` and
the commands that re-seal stages outside `run` (rollback, rotate, recipients remove); the
report of a rotation is printed by `rotate` and `recipients remove` alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

from vault.cli.context import Context
from vault.errors import UsageError

if TYPE_CHECKING:
    from vault.project import Project

T = TypeVar("T")

# The deploy lock's wait and lifetime: `lock acquire`, `run` and the re-sealing commands.
lock_timeout_option = click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    envvar="SST_VAULT_LOCK_TIMEOUT",
    show_envvar=True,
    help="Seconds to wait for a held deploy lock (0: fail at once, naming the holder).",
)
lock_ttl_option = click.option(
    "--lock-ttl",
    type=click.IntRange(min=0),
    default=None,
    help="Seconds after which others may take over this lock if it is left behind "
    "(default 6 hours; 0: never).",
)

# Shared by `run` and `commit --push`: how long a push keeps rebasing while others push.
push_timeout_option = click.option(
    "--push-timeout",
    type=click.FloatRange(min=0),
    default=None,
    envvar="SST_VAULT_PUSH_TIMEOUT",
    show_envvar=True,
    help="Seconds a push keeps fetching, rebasing and retrying while others push to the "
    "branch (default 600).",
)


# For the commands that re-seal stages outside `run` (rollback, rotate, recipients remove).
push_option = click.option(
    "--push",
    is_flag=True,
    help="Pull first, then push the commit, holding the deploy lock of every stage it "
    "re-seals (so it never races a `run`; waits per --lock-timeout).",
)


def maybe_locked(
    ctx: Context,
    push: bool,
    stages: list[str] | None,
    change: Callable[[Project], T],
    *,
    command: str,
    lock_timeout: float,
    lock_ttl: int | None,
) -> T:
    """`change(project)` as it is, or with --push under the deploy locks (`change.pushed`)."""
    project = ctx.project()
    if not push:
        return change(project)
    from vault.change import pushed

    return pushed(
        project,
        stages,
        change,
        command=command,
        lock_timeout=lock_timeout,
        lock_ttl=lock_ttl,
        info=ctx.info,
    )


def parse_recipients(items: tuple[str, ...]) -> dict[str, str]:
    """NAME=PUBLIC options as a dict (the public key is checked where it is used)."""
    found: dict[str, str] = {}
    for item in items:
        name, sep, public = item.partition("=")
        if not sep or not name or not public:
            # Never echo the value: a secret key pasted here must not reach a CI log.
            raise UsageError("a --recipient option is not NAME=PUBLIC", "expected NAME=age1…")
        found[name] = public
    return found


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
