"""`key …`: the vault's secret key, its public identity, and this machine's keyring entry."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vault import keys
from vault.cli.context import Context, pass_context
from vault.errors import ConfigError, UsageError


@click.group("key")
def key_group() -> None:
    """Generate, import and forget keys; show the key id; trust a rotated data key.

    \b
    Examples:
      sst-vault key generate > ci.key     # a new age key (its public key on stderr)
      sst-vault key export-public         # your age1… line, for `recipients add`
    """


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

    \b
    Example:
      sst-vault key id      # svk1-…: set it as the plain CI variable SST_VAULT_KEY_ID
    """
    click.echo(ctx.project().keys.sealing.key_id)


@key_group.command(
    "import", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
)
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the secret from this file instead of stdin.",
)
@click.option("--replace", is_flag=True, help="Overwrite a different key already stored.")
@click.pass_context
def import_cmd(click_ctx: click.Context, file: Path | None, replace: bool) -> None:
    """Store the vault's secret key in the OS keyring (from stdin or --file, never an argument).

    The key must open this vault first (for age: be one of its recipients). On the first
    import the vault's data key id is pinned in the keyring too.

    \b
    Example:
      sst-vault key import --file ~/bob.key && shred -u ~/bob.key
      pbpaste | sst-vault key import
    """
    from vault import pins

    if click_ctx.args:  # refused without echoing them: it may be the secret itself
        raise UsageError(
            "`key import` takes no key argument (an argument ends up in shell history and in "
            "the process list)",
            "pipe the key on stdin, or pass --file PATH",
        )
    ctx: Context = click_ctx.find_object(Context)
    project = ctx.project()
    if file is not None:
        try:
            text, origin = file.read_text(), str(file)
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not a text file"
            raise UsageError(f"cannot read {file} ({reason})", "check the path") from None
    elif sys.stdin.isatty():
        text, origin = click.prompt("Secret key", hide_input=True, err=True), "the prompt"
    else:
        text, origin = sys.stdin.read(), "stdin"
    report = pins.import_key(project, text, origin, replace=replace)
    for warning in report.warnings:
        ctx.info(f"Warning: {warning}")
    if report.unchanged:
        ctx.info("The OS keyring already holds this key for this vault.")
    else:
        verb = "Replaced the key" if report.replaced else "Stored the key"
        ctx.info(f"{verb} of vault {project.config.vault_id} ({project.app}) in the OS keyring.")
    if report.public:
        ctx.info(f"Public key: {report.public}")
    if report.pinned:
        ctx.info(f"Pinned the vault's data key {report.key_id} in the keyring.")
    if report.pin_conflict:
        ctx.info(
            f"Warning: the vault's data key is {report.key_id}, but your keyring trusts "
            f"{report.pin_conflict}: review it with `sst-vault key trust` before using the vault"
        )


@key_group.command("export-public")
@pass_context
def export_public_cmd(ctx: Context) -> None:
    """Print the age public key of the key in use (to be added with `recipients add`).

    \b
    Example:
      sst-vault key export-public     # send the age1… line to a member of the vault
    """
    try:
        project = ctx.project()
    except ConfigError:
        project = None  # outside a vault the key can still come from SST_VAULT_KEY(_FILE)
    source = project.key_source if project else keys.find_source(None, use_keyring=False)
    secret = source.secrets[0]
    if secret.backend != "age":
        raise UsageError(
            f"the key in {source.origin} is a Fernet key, which has no public part",
            "share the Fernet key itself through a secret channel, or use the age backend",
        )
    public = secret.public()
    click.echo(public)
    if project and project.config.backend == "age":
        names = [n for n, p in project.config.recipients.items() if p == public]
        if names:
            ctx.info(f"(the recipient {names[0]} of this vault; key from {source.origin})")
        else:
            ctx.info(
                "(not a recipient of this vault yet: a member runs "
                f"`sst-vault recipients add NAME {public}`)"
            )


@key_group.command("forget")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def forget_cmd(ctx: Context, yes: bool) -> None:
    """Delete this vault's key (and its data key pin) from the OS keyring.

    If that key is stored nowhere else and no other recipient can re-add you, the vault is
    lost to you: export or back it up first.

    \b
    Example:
      sst-vault key forget --yes    # e.g. before handing the laptop on
    """
    from vault import pins

    project = ctx.project()
    stored = keys.keyring_get(project.config.vault_id)
    if stored is None:
        had_pin = pins.delete_pin(project.config.vault_id)
        ctx.info(
            f"No key for vault {project.config.vault_id} in the OS keyring: nothing to forget"
            + (" (its data key pin was removed)." if had_pin else ".")
        )
        return
    _confirm(
        yes,
        f"Delete the key of vault {project.config.vault_id} ({project.app}) from the OS keyring?",
        "pass --yes to delete the key",
    )
    pins.forget(project)
    ctx.info(f"Deleted the key of vault {project.config.vault_id} from the OS keyring.")


@key_group.command("trust")
@click.option("--yes", "-y", is_flag=True, help="Trust the new data key without asking.")
@pass_context
def trust_cmd(ctx: Context, yes: bool) -> None:
    """Review a changed data key (who changed it in git) and pin it in the keyring.

    After a member rotated the key or removed a recipient, your keyring still trusts the
    old data key id and refuses the new one. Check that the commit shown is expected, then
    confirm.

    \b
    Example:
      git pull && sst-vault key trust   # after a member ran `sst-vault rotate --push`
    """
    from vault import pins

    project = ctx.project()
    info = pins.trust_info(project)
    if info.pinned == info.current:
        ctx.info(f"Your keyring already trusts the vault's data key {info.current}.")
        click.echo(f"SST_VAULT_KEY_ID={info.current}")
        return
    path = project.repo.data_key_file.relative_to(project.root)
    click.echo(f"The vault's data key is {info.current}.")
    click.echo(f"Your keyring trusts {info.pinned}." if info.pinned else "Nothing pinned yet.")
    if info.change:
        c = info.change
        click.echo(f"Last change of {path}: commit {c.commit[:12]} by {c.author} <{c.email}>")
        click.echo(f"  on {c.date}: {c.summary}")
    else:
        click.echo(f"{path} has never been committed.")
    if info.uncommitted:
        click.echo(f"Warning: {path} has changes in this working tree that are not committed.")
    _confirm(yes, f"Trust the data key {info.current}?", f"pass --yes to trust {info.current}")
    if info.keyring:
        pins.trust(project, info.current)
        ctx.info(f"Pinned {info.current} in the OS keyring.")
    else:
        ctx.info("No usable OS keyring: update SST_VAULT_KEY_ID where you set it.")
    click.echo(f"SST_VAULT_KEY_ID={info.current}")


def _confirm(yes: bool, question: str, how: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("not confirmed (stdin is not a terminal)", how)
    if not click.confirm(question, default=False, err=True):
        raise click.exceptions.Abort()
