"""`key generate`, `key id`: the vault's secret key and its public identity."""

from __future__ import annotations

import click

from vault import keys
from vault.cli.context import Context, pass_context


@click.group("key")
def key_group() -> None:
    """Generate keys and show the vault's key id."""


@key_group.command("generate")
@click.option(
    "--backend",
    type=click.Choice(keys.BACKENDS),
    default="age",
    show_default=True,
    help="age: an X25519 identity (AGE-SECRET-KEY-1…); fernet: a Fernet key.",
)
def generate_cmd(backend: str) -> None:
    """Print a new secret key on stdout (its public key on stderr), like age-keygen.

    \b
    Example:
      export SST_VAULT_KEY=$(sst-vault key generate)
      sst-vault key generate > ci.key    # then store ci.key as a CI secret
    """
    secret = keys.generate(backend)
    if backend == "age":
        click.echo(f"Public key: {secret.public()}", err=True)
    click.echo(secret.text)


@key_group.command("id")
@pass_context
def id_cmd(ctx: Context) -> None:
    """Print the vault's key id: the value to set as SST_VAULT_KEY_ID in CI.

    Pinning it makes CI refuse a data key that was replaced in the repository.
    """
    click.echo(ctx.project().keys.sealing.key_id)
