"""Entry point: the command group, global options, and the one place errors become exit codes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vault.cli.commands.commit import commit_cmd
from vault.cli.commands.init import init_cmd
from vault.cli.commands.key import key_group
from vault.cli.commands.prepare import prepare_cmd
from vault.cli.commands.status import status_cmd
from vault.cli.context import Context
from vault.errors import EXIT_REFUSED, EXIT_USAGE, VaultError

EPILOG = """\b
Exit codes: 0 success; 1 operation refused or failed (nothing was half-written);
2 usage or configuration error; `run` exits with its command's own code.

\b
Keys: SST_VAULT_KEY (one per line, newest first), else SST_VAULT_KEY_FILE,
else the OS keyring. SST_VAULT_KEY_ID pins the vault's data key.
"""


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--project",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder holding sst-vault.toml (default: search upward from here).",
)
@click.option(
    "--sst-home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SST_VAULT_SST_HOME",
    help="SST's config folder (default: ~/.config/sst on Linux, per Go's UserConfigDir).",
)
@click.option("-v", "--verbose", count=True, help="Say more.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and requested output.")
@click.version_option(package_name="sst-vault", prog_name="sst-vault")
@click.pass_context
def cli(
    ctx: click.Context, project: Path | None, sst_home: Path | None, verbose: int, quiet: bool
) -> None:
    """Keep SST (home: "local") state encrypted in this git repository.

    \b
    First time, next to sst.config.ts:
      export SST_VAULT_KEY=$(sst-vault key generate)   # or let init use the keyring
      sst-vault init
    After each deploy:      sst-vault commit prod
    Before the next one:    sst-vault prepare prod
    """
    ctx.obj = Context(project_dir=project, sst_home=sst_home, verbose=verbose, quiet=quiet)


cli.add_command(key_group)
cli.add_command(init_cmd)
cli.add_command(prepare_cmd)
cli.add_command(commit_cmd)
cli.add_command(status_cmd)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every VaultError becomes one line on stderr and its exit code."""
    try:
        cli.main(args=argv, prog_name="sst-vault", standalone_mode=False)
    except VaultError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_REFUSED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    sys.exit(0)
