"""Entry point: the command group, global options, and the one place errors become exit codes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vault.cli.commands.commit import commit_cmd
from vault.cli.commands.diff import diff_cmd
from vault.cli.commands.doctor import doctor_cmd
from vault.cli.commands.init import init_cmd
from vault.cli.commands.key import key_group
from vault.cli.commands.lock import lock_group
from vault.cli.commands.log import log_cmd
from vault.cli.commands.migrate import migrate_cmd
from vault.cli.commands.prepare import prepare_cmd
from vault.cli.commands.recipients import recipients_group
from vault.cli.commands.rollback import rollback_cmd
from vault.cli.commands.rotate import rotate_cmd
from vault.cli.commands.run import run_cmd
from vault.cli.commands.scan import scan_cmd
from vault.cli.commands.setup_git import setup_git_cmd
from vault.cli.commands.status import status_cmd
from vault.cli.commands.textconv import textconv_cmd
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
cli.add_command(recipients_group)
cli.add_command(rotate_cmd)
cli.add_command(run_cmd)
cli.add_command(lock_group)
cli.add_command(diff_cmd)
cli.add_command(log_cmd)
cli.add_command(rollback_cmd)
cli.add_command(setup_git_cmd)
cli.add_command(textconv_cmd)
cli.add_command(migrate_cmd)
cli.add_command(scan_cmd)
cli.add_command(doctor_cmd)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every VaultError becomes one line on stderr and its exit code."""
    try:
        # A command's `ctx.exit(code)` comes back as the return value (how `run` keeps CMD's code).
        code = cli.main(args=argv, prog_name="sst-vault", standalone_mode=False)
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
    sys.exit(code if isinstance(code, int) else 0)
