"""`init`: set up a vault next to sst.config.ts."""

from __future__ import annotations

from pathlib import Path

import click

from vault import keys
from vault.cli.context import Context, pass_context
from vault.cli.options import parse_recipients
from vault.init import init
from vault.paths import DEFAULT_STATE_DIR


@click.command("init")
@click.option("--app", help="SST app name (default: read from sst.config.ts).")
@click.option(
    "--backend",
    type=click.Choice(keys.BACKENDS),
    help="age (default; team keys, CI key) or fernet (one shared key).",
)
@click.option(
    "--state-dir",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where vault files go, relative to the project.",
)
@click.option(
    "--no-keyring",
    is_flag=True,
    help="Do not use the OS keyring; the key must be in SST_VAULT_KEY(_FILE).",
)
@click.option(
    "--recipient",
    "recipients",
    multiple=True,
    metavar="NAME=AGE1…",
    help="Another age public key that may open the vault (repeatable).",
)
@click.option(
    "--name",
    help="Recipient name for this key (default: ci for a key from the "
    "environment in CI, else your user name).",
)
@pass_context
def init_cmd(
    ctx: Context,
    app: str | None,
    backend: str | None,
    state_dir: str,
    no_keyring: bool,
    recipients: tuple[str, ...],
    name: str | None,
) -> None:
    """Write sst-vault.toml, the signed key record, the wrapped data key and git attributes.

    Uses the key in SST_VAULT_KEY (or SST_VAULT_KEY_FILE) if set; otherwise generates one
    and stores it in the OS keyring. Then prints the CI variables to set. Commit the new
    files with your next `sst-vault commit`.

    \b
    Example:
      export SST_VAULT_KEY=$(sst-vault key generate)
      sst-vault init --recipient alice=age1…
    """
    extra = parse_recipients(recipients)
    project = (ctx.project_dir or Path.cwd()).resolve()
    report = init(
        project,
        app=app,
        backend=backend,
        state_dir=state_dir,
        use_keyring=not no_keyring,
        recipients=extra,
        name=name,
    )
    if report.record is not None:
        # Whoever made the vault trusts it: this SST home remembers its identity from now on.
        from vault import trust

        made = ctx.project()
        trust.remember(
            made.home, report.config.app, report.record, places=made.places(), create=True
        )
    for warning in report.warnings:
        ctx.info(f"Warning: {warning}")
    ctx.info(
        f"Initialised vault for app {report.config.app!r} ({report.config.backend}) in {project}"
    )
    ctx.info(f"Key: {report.key_origin}")
    if report.public:
        named = (
            f" (this key is {report.owners[0]!r}; pick the name with --name)"
            if report.owners
            else ""
        )
        ctx.info(f"Recipients: {', '.join(report.recipients)}{named}")
    ctx.info("")
    ctx.info("Set these CI variables (mark SST_VAULT_KEY secret):")
    others = [n for n in report.recipients if n not in report.owners]
    if report.generated and others:
        ctx.info(
            f"  SST_VAULT_KEY     the secret key of recipient {others[0]!r} "
            "(what its `sst-vault key generate` printed)"
        )
    elif report.generated:
        ctx.info(
            "  SST_VAULT_KEY     a key of CI's own: `sst-vault key generate > ci.key`, then "
            "`sst-vault recipients add ci <its public key>`"
        )
    else:
        ctx.info(f"  SST_VAULT_KEY     the secret key now in {report.key_origin}")
    click.echo(f"SST_VAULT_PIN={report.pin}")
