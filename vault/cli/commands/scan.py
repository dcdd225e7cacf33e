"""`scan`: find plaintext SST state in the work tree or in git history."""

from __future__ import annotations

from pathlib import Path

import click

from vault.cli.context import Context, pass_context
from vault.errors import RefusedError


@click.command("scan")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--history", is_flag=True, help="Scan every file version of every commit.")
@click.option(
    "--exclude",
    "patterns",
    multiple=True,
    metavar="GLOB",
    help="Leave out paths matching GLOB, or inside a folder that does (repeatable).",
)
@pass_context
def scan_cmd(ctx: Context, path: Path | None, history: bool, patterns: tuple[str, ...]) -> None:
    """Find plaintext SST state, passphrases and secret files; exit 1 naming each.

    Without --history: the files git would commit under PATH (default: here), tracked or
    not ignored; outside git, every file. With --history: every file version of every
    commit on any ref, each named with its commit. Works in any repository, with or
    without sst-vault.toml. Exit 0 when nothing is found. Paths are relative to PATH, or
    with --history to the repository's top; --exclude matches them (a test fixture of
    fake state, say) and says how many it left out.

    \b
    Examples:
      sst-vault scan                 # in a pre-commit hook
      sst-vault scan --history       # after `migrate`, before and after a purge
      sst-vault scan --exclude 'tests/fixtures'
    """
    from vault import scan

    where = path or Path.cwd()
    findings = scan.scan_history(where) if history else scan.scan_tree(where)
    if patterns:
        kept = [f for f in findings if not scan.excluded(f.path, patterns)]
        if len(kept) < len(findings):
            ctx.info(f"{len(findings) - len(kept)} finding(s) left out by --exclude")
        findings = kept
    for finding in findings:
        click.echo(finding.line())
    if findings:
        what = "file version(s) in history" if history else "file(s)"
        raise RefusedError(  # printed by main, even with -q: it says why scan exits 1
            f"{len(findings)} plaintext SST {what}",
            "encrypt them with `sst-vault migrate` (or delete them), and treat their secrets "
            "as leaked" + (" if they were pushed" if not history else ""),
        )
    outside = " outside the excluded paths" if patterns else ""
    ctx.info(f"No plaintext SST state found{outside}" + (" in history." if history else "."))
