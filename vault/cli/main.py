"""Entry point: the command group, global options, and the one place errors become exit codes."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click

from vault import __version__
from vault.cli.context import Context
from vault.errors import EXIT_REFUSED, EXIT_USAGE, ReportedFailure, VaultError

# name: (module under vault.cli.commands, attribute, short help, hidden). Commands are imported
# only when invoked, so `sst-vault --help` and `prepare` never load keyring
# modules they do not use. tests/test_cli.py checks the short help against each command.
COMMANDS: dict[str, tuple[str, str, str, bool]] = {
    "init": (
        "init",
        "init_cmd",
        "Write sst-vault.toml, the signed key record, the wrapped data key and git attributes.",
        False,
    ),
    "prepare": (
        "prepare",
        "prepare_cmd",
        "Decrypt STAGE's state, passphrase and secrets into the SST home.",
        False,
    ),
    "commit": (
        "commit",
        "commit_cmd",
        "Encrypt STAGE's SST files into the repo and commit exactly those files.",
        False,
    ),
    "status": (
        "status",
        "status_cmd",
        "Show, per stage and kind: in sync, home ahead, repo ahead, conflict, … or missing.",
        False,
    ),
    "resolve": (
        "resolve",
        "resolve_cmd",
        "Keep one side of a merge conflict on STAGE's vault files, re-sealed at a newer serial.",
        False,
    ),
    "run": (
        "run",
        "run_cmd",
        "Run COMMAND for STAGE with its state in place, then commit and push the new state.",
        False,
    ),
    "lock": (
        "lock",
        "lock_group",
        "The deploy lock: a ref on the git remote that one runner at a time holds.",
        False,
    ),
    "rescue": (
        "rescue",
        "rescue_group",
        "List and land deploy states that `run` could not push to the branch.",
        False,
    ),
    "key": (
        "key",
        "key_group",
        "Generate, import and forget keys; print the pins; trust a re-created vault.",
        False,
    ),
    "recipients": (
        "recipients",
        "recipients_group",
        "List, add and remove the age public keys that can open the vault.",
        False,
    ),
    "rotate": (
        "rotate",
        "rotate_cmd",
        "Re-seal every stage's vault files under a new key, and commit that.",
        False,
    ),
    "diff": (
        "diff",
        "diff_cmd",
        "Show STAGE's decrypted state differences as a unified JSON diff.",
        False,
    ),
    "log": (
        "log",
        "log_cmd",
        "List the commits that changed STAGE's vault files, newest first.",
        False,
    ),
    "rollback": (
        "rollback",
        "rollback_cmd",
        "Restore STAGE's state files as they were at REV, as a new commit.",
        False,
    ),
    "setup-git": (
        "setup_git",
        "setup_git_cmd",
        "Register the diff driver so `git diff` and `git log -p` show decrypted state.",
        False,
    ),
    "migrate": (
        "migrate",
        "migrate_cmd",
        "Encrypt the recipe's plaintext state (infra/state/<kind>/<stage>.json) into the vault.",
        False,
    ),
    "scan": (
        "scan",
        "scan_cmd",
        "Find plaintext SST state, passphrases and secret files; exit 1 naming each.",
        False,
    ),
    "doctor": (
        "doctor",
        "doctor_cmd",
        "Check config, key sources, keyring, SST home, git setup, remote and deploy locks.",
        False,
    ),
    "textconv": (
        "textconv",
        "textconv_cmd",
        "Print FILE decrypted for `git diff` (the header alone without a key); always exits 0.",
        True,
    ),
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        import importlib

        module = importlib.import_module(f"vault.cli.commands.{entry[0]}")
        return getattr(module, entry[1])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_, hidden) in COMMANDS.items() if not hidden]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


EPILOG = """\b
Exit codes: 0 success; 1 operation refused or failed (nothing was half-written);
2 usage or configuration error; `run` exits with its command's own code.

\b
Keys: SST_VAULT_KEY (one per line, newest first), else SST_VAULT_KEY_FILE,
else the OS keyring. SST_VAULT_PIN pins the vault's identity (`key pin`);
SST_VAULT_KEY_ID its exact data key (`key id`).
"""


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--project",
    type=click.Path(file_okay=False),
    help="Folder holding sst-vault.toml (default: search upward from here).",
)
@click.option(
    "--sst-home",
    type=click.Path(file_okay=False),
    envvar="SST_VAULT_SST_HOME",
    help="SST's config folder (default: ~/.config/sst on Linux, per Go's UserConfigDir).",
)
@click.option("-v", "--verbose", count=True, help="Say more.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and requested output.")
@click.version_option(__version__, prog_name="sst-vault", message="%(prog)s %(version)s")
@click.pass_context
def cli(
    ctx: click.Context, project: str | None, sst_home: str | None, verbose: int, quiet: bool
) -> None:
    """Keep SST (home: "local") state encrypted in this git repository.

    \b
    Examples:
      export SST_VAULT_KEY=$(sst-vault key generate)   # first time, next to sst.config.ts
      sst-vault init                                   # (or let init use the keyring)
      sst-vault commit prod                            # after each deploy
      sst-vault prepare prod                           # before the next one
    """
    ctx.obj = Context.from_options(project, sst_home, verbose=verbose, quiet=quiet)


def _secret_in_arguments(argv: list[str]) -> bool:
    from vault.keys import looks_like_secret_key

    return any(looks_like_secret_key(arg) for arg in argv)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every VaultError becomes one line on stderr and its exit code."""
    from vault.keyenv import take_environment

    take_environment()  # before anything can start a child process
    try:
        # A command's `ctx.exit(code)` comes back as the return value (how `run` keeps CMD's code).
        code = cli.main(args=argv, prog_name="sst-vault", standalone_mode=False)
    except ReportedFailure as exc:
        sys.exit(exc.exit_code)
    except VaultError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_REFUSED)
    except click.ClickException as exc:
        if _secret_in_arguments(sys.argv[1:] if argv is None else argv):
            # click quotes the offending argument ("No such option '-----BEGIN OPENSSH…'"):
            # a pasted secret key must not be printed, not even in part.
            click.echo(
                "Error: an argument looks like a secret key (not shown), and secrets are never "
                "taken from arguments: give a public key (age1… or ssh-ed25519 …), or pass the "
                "secret on stdin or in SST_VAULT_KEY_FILE",
                err=True,
            )
            sys.exit(EXIT_USAGE)
        exc.show()
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except OSError as exc:
        # Disk full, permission, read-only file system: one line naming the file, never a
        # traceback. Callers that know a better path raise FileSystemError themselves.
        from vault.errors import from_os_error

        error = from_os_error(exc)
        click.echo(f"Error: {error}", err=True)
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def console() -> NoReturn:
    """The `sst-vault` console script (and `python -m vault`): `main()`, then the process ends
    at once.

    Python's own shutdown collects every object and tears down every module the command
    imported: 25-30 ms after a `prepare`, paid by every command and by nobody's benefit,
    since a finished command has closed its files, joined its threads and ended its children
    (every thread sst-vault starts is joined or a daemon, and no module of ours registers
    an `atexit` hook). What shutdown does that matters is done here: the standard streams are
    flushed, and a flush that fails turns success into 120 as Python's would. `main()` itself
    keeps ending with SystemExit for callers that run it in their own process.
    """
    try:
        main()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        if stream is None or stream.closed:  # no fd 1 or 2 at start (`… >&-`): Python skips it too
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`sst-vault log prod | head`)
            code = code or 120
    os._exit(code)
