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
    """Generate, import and forget keys; print the pins; trust a re-created vault.

    \b
    Examples:
      sst-vault key generate > ci.key     # a new age key (its public key on stderr)
      sst-vault key export-public         # your age1… line, for `recipients add`
      sst-vault key pin                   # svid1-…: SST_VAULT_PIN for CI
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
    """Print the id of the vault's newest data key (for SST_VAULT_KEY_ID, the strictest pin).

    SST_VAULT_KEY_ID pins this exact data key: CI then refuses any other, also after a
    member's rotation, until the variable is updated. Most setups pin the vault's identity
    instead (`sst-vault key pin`), which survives rotations.

    \b
    Example:
      sst-vault key id       # svk1-…: set as SST_VAULT_KEY_ID in CI
    """
    click.echo(ctx.project().keys.sealing.key_id)


@key_group.command("pin")
@pass_context
def pin_cmd(ctx: Context) -> None:
    """Print the vault's identity: the value to set as SST_VAULT_PIN in CI.

    The identity is a hash of the first entry of the signed key record (age), so it never
    changes when members rotate the data key or add and remove recipients. With it, a fresh CI
    clone refuses a key record, data key or vault file that a writer without a key forged. For
    the fernet backend it is the id of the newest Fernet key.

    \b
    Example:
      sst-vault key pin      # svid1-…: set as the plain CI variable SST_VAULT_PIN
    """
    project = ctx.project()
    if project.config.backend == "age":
        click.echo(project.trusted.record.identity)
    else:
        click.echo(project.keys.sealing.key_id)


@key_group.command("upgrade")
@click.option(
    "--recipient",
    "recipients",
    multiple=True,
    metavar="NAME=PUBLIC",
    help="The recipients to carry over (default: [recipients] of sst-vault.toml). Repeatable.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask to confirm the recipients.")
@pass_context
def upgrade_cmd(ctx: Context, recipients: tuple[str, ...], yes: bool) -> None:
    """Give a vault made by sst-vault 0.1 its signed key record (under a new data key).

    0.1 read the recipients from sst-vault.toml, where anyone who can push could add a key of
    their own. The upgrade shows the recipients it will sign for review, starts the signed key
    record with a new data key wrapped to them, re-seals every file and commits. Then push,
    and set SST_VAULT_PIN in CI to the value printed.

    \b
    Example:
      sst-vault key upgrade                  # review the names and keys, confirm
      git push
    """
    from vault import team
    from vault.cli.options import parse_recipients

    project = ctx.project()
    team.check_upgradable(project)
    chosen = parse_recipients(recipients) if recipients else dict(project.config.legacy_recipients)
    for name, public in chosen.items():
        click.echo(f"  {name} = {public}")
    _confirm(
        yes,
        "Only these keys will open the vault from now on. Are they all your team's?",
        "pass --yes after checking the recipients listed",
    )
    report = team.upgrade(project, chosen or None)
    ctx.info(
        f"Signed key record started; {len(report.files)} file(s) re-sealed under "
        f"{report.key_id}" + (f" in commit {report.commit[:12]}" if report.commit else "")
    )
    ctx.info("Push it, then set in CI:")
    # The record just signed: verifying it again would only repeat the history read (a thread
    # and two gits) after the upgrade is committed.
    click.echo(f"SST_VAULT_PIN={report.identity}")


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

    The key must open this vault first (for age: be one of the recipients of the verified
    key record), and the vault must pass every trust check.

    \b
    Example:
      sst-vault key import --file ~/bob.key && shred -u ~/bob.key
      pbpaste | sst-vault key import
    """
    from vault import keyimport

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
    report = keyimport.import_key(project, text, origin, replace=replace)
    for warning in report.warnings:
        ctx.info(f"Warning: {warning}")
    if report.unchanged:
        ctx.info("The OS keyring already holds this key for this vault.")
    else:
        verb = "Replaced the key" if report.replaced else "Stored the key"
        ctx.info(f"{verb} of vault {project.config.vault_id} ({project.app}) in the OS keyring.")
    if report.public:
        ctx.info(f"Public key: {report.public}")


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
        names = [n for n, p in _record_recipients(project).items() if p == public]
        if names:
            ctx.info(f"(the recipient {names[0]} of this vault; key from {source.origin})")
        else:
            ctx.info(
                "(not a recipient of this vault yet: a member runs "
                f"`sst-vault recipients add NAME {public}`)"
            )


def _record_recipients(project) -> dict[str, str]:
    """The recipients of the signed record (signatures checked; no key needed), or none."""
    from vault import trust
    from vault.errors import VaultError

    try:
        record = trust.load_record(project.root, project.repo.record_parts, project.app)
    except VaultError:
        return {}
    return record.recipients if record else {}


@key_group.command("forget")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def forget_cmd(ctx: Context, yes: bool) -> None:
    """Delete this vault's key from the OS keyring.

    If that key is stored nowhere else and no other recipient can re-add you, the vault is
    lost to you: export or back it up first. What this machine remembers of the vault's
    identity stays (it is not secret, and it keeps protecting a later import).

    \b
    Example:
      sst-vault key export-public && sst-vault key forget
    """
    from vault import keyimport, oskeyring

    project = ctx.project()

    stored = oskeyring.get(project.config.vault_id)
    if stored is None:
        ctx.info(
            f"No key for vault {project.config.vault_id} in the OS keyring: nothing to forget."
        )
        return
    _confirm(
        yes,
        f"Delete the key of vault {project.config.vault_id} ({project.app}) from the OS keyring?",
        "pass --yes to delete the key",
    )
    keyimport.forget(project)
    ctx.info(f"Deleted the key of vault {project.config.vault_id} from the OS keyring.")


@key_group.command("trust")
@click.option("--yes", "-y", is_flag=True, help="Accept the vault's identity without asking.")
@pass_context
def trust_cmd(ctx: Context, yes: bool) -> None:
    """Review a changed vault identity (who changed the key record in git) and accept it.

    Rotations and recipient changes by members are signed and need no review. A different
    vault identity means the vault was re-created (`init` again) or someone forged it: every
    command refuses it until you check the commit shown and confirm here. A key record that
    went back or forked is never accepted.

    \b
    Example:
      sst-vault key trust        # shows the commit, asks before accepting
    """
    from vault import trustchange

    project = ctx.project()
    info = trustchange.trust_info(project)
    if info.remembered == info.identity:
        ctx.info(f"This machine already trusts the vault {info.identity}.")
        click.echo(f"SST_VAULT_PIN={info.identity}")
        return
    path = project.record_label
    click.echo(f"The vault's identity is {info.identity} (key record entry {info.entry}).")
    click.echo(
        f"This machine trusted {info.remembered}." if info.remembered else "Nothing trusted yet."
    )
    click.echo("Recipients: " + ", ".join(f"{n} ({p[:16]}…)" for n, p in info.recipients.items()))
    if info.change:
        click.echo(f"Last change of {path}: {info.change.describe()}")
    else:
        click.echo(f"{path} has never been committed.")
    if info.uncommitted:
        click.echo(f"Warning: {path} has changes in this working tree that are not committed.")
    _confirm(yes, f"Trust the vault {info.identity}?", f"pass --yes to trust {info.identity}")
    trustchange.accept(project)
    ctx.info(f"This machine now trusts the vault {info.identity}.")
    click.echo(f"SST_VAULT_PIN={info.identity}")


def _confirm(yes: bool, question: str, how: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("not confirmed (stdin is not a terminal)", how)
    if not click.confirm(question, default=False, err=True):
        raise click.exceptions.Abort()
