"""`migrate`: adopt the plaintext recipe's state files into the vault."""

from __future__ import annotations

import click

from vault.cli.context import Context, pass_context


@click.command("migrate")
@click.option(
    "--from",
    "source",
    metavar="DIR",
    help="Folder of the plaintext <kind>/<stage>.json files (default: the vault's state_dir).",
)
@click.option("--force", is_flag=True, help="Replace vault files that differ from the plaintext.")
@pass_context
def migrate_cmd(ctx: Context, source: str | None, force: bool) -> None:
    """Encrypt the recipe's plaintext state (infra/state/<kind>/<stage>.json) into the vault.

    Seals every app, passphrase and secret file found, verifies each opens to the same
    bytes, removes the plaintext from the work tree and the index, makes sure the ignore
    rules keep it out, and commits. Run `sst-vault init` first. Git history still holds the
    plaintext afterwards: the command says how to purge it and what to rotate.

    \b
    Example:
      sst-vault init && sst-vault migrate && git push
    """
    from vault import migrate

    project = ctx.project()
    report = migrate.migrate(project, source, force=force)
    for path, reason in report.skipped:
        ctx.info(f"Skipped {path}: {reason}")
    for m in report.migrated:
        ctx.info(f"{m.stage} {m.kind}: {m.action} (serial {m.serial}), plaintext removed")
    if report.commit:
        ctx.info(f"Committed {report.commit[:12]}")
    stages = " ".join(sorted({m.stage for m in report.migrated}))
    ctx.info(f"Next: `sst-vault prepare {stages}` on each machine that deploys.")
    if report.history_commits:
        # Always shown, even with -q: this is the part a user must not miss.
        click.echo(
            f"Warning: {report.history_commits} earlier commit(s) still hold the plaintext "
            "state and passphrases; anyone with a clone can read them.\n"
            "  Treat them as leaked: rotate every `sst secret` value and any credential in the\n"
            "  state's outputs (the old passphrase then opens nothing current).\n"
            "  To purge history (rewrites every commit; all clones must re-clone), with "
            "git-filter-repo:\n"
            f"    {migrate.purge_command(report)}\n"
            "    git push --force --all && git push --force --tags\n"
            "  Then check with `sst-vault scan --history`.",
            err=True,
        )
