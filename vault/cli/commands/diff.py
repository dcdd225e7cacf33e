"""`diff`: decrypted differences of a stage's state (home vs repo, or through git history)."""

from __future__ import annotations

import click

from vault.cli.context import Context, pass_context
from vault.errors import ReportedFailure
from vault.paths import KINDS


@click.command("diff")
@click.argument("stage")
@click.argument("rev", required=False)
@click.option(
    "--kind", "kinds", multiple=True, type=click.Choice(KINDS), help="Only this kind (repeatable)."
)
@click.option("--show-secrets", is_flag=True, help="Print `sst secret` values instead of masks.")
@click.option("--exit-code", is_flag=True, help="Exit 1 when there are differences, like git.")
@pass_context
def diff_cmd(
    ctx: Context,
    stage: str,
    rev: str | None,
    kinds: tuple[str, ...],
    show_secrets: bool,
    exit_code: bool,
) -> None:
    """Show STAGE's decrypted state differences as a unified JSON diff.

    \b
    Without REV: the repo's vault files against the SST home (what `commit` would change).
    With REV: that commit against the working tree; REV1..REV2: between two commits.
    A passphrase is only reported changed or unchanged, never printed. `sst secret` values
    are masked (with a short keyed fingerprint that changes with the value) unless
    --show-secrets.

    \b
    Examples:
      sst-vault diff prod                    # home vs repo
      sst-vault diff prod HEAD~1             # last commit's change vs now
      sst-vault diff prod v1.2..main --kind secret
    """
    from vault import diff

    project = ctx.project()
    results = diff.diff(project, stage, rev, kinds or KINDS, show_secrets=show_secrets)
    changed = False
    for item in results:
        if item.status == "absent":
            continue
        if item.status != "unchanged":
            changed = True
        if item.kind == "passphrase" or not item.lines:
            extra = f" ({item.note})" if item.note and item.status == "changed" else ""
            click.echo(f"{stage} {item.kind}: {item.status}{extra}")
            continue
        click.echo(f"{stage} {item.kind}: {item.status}")
        for line in item.lines:
            click.echo(line)
        if item.note:
            ctx.info(f"Note: {item.note}")
    if exit_code and changed:
        raise ReportedFailure()
