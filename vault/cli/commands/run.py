"""`run`: lock, pull, prepare, run the deploy command, commit, push, unlock (the CI step)."""

from __future__ import annotations

import click

from vault.cli.commands.lock import lock_timeout_option, lock_ttl_option
from vault.cli.context import Context, pass_context


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--stage", required=True, help="The SST stage the command deploys.")
@lock_timeout_option
@lock_ttl_option
@click.option("--no-push", is_flag=True, help="Commit the state but do not push it.")
@click.option("--no-lock", is_flag=True, help="Do not take the deploy lock (you guard it).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_context
@click.pass_context
def run_cmd(
    click_ctx: click.Context,
    ctx: Context,
    stage: str,
    lock_timeout: float,
    lock_ttl: int | None,
    no_push: bool,
    no_lock: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND for STAGE with its state in place, then commit and push the new state.

    In order: take the deploy lock, pull, decrypt the stage's state into the SST home, run
    COMMAND (its environment holds no SST_VAULT_KEY, SST_VAULT_KEY_FILE or pin), commit
    whatever state it left (also when it failed), push (rebasing over unrelated commits),
    release the lock. SIGINT and SIGTERM go to COMMAND first; the commit and release still
    run. Exits with COMMAND's code.

    \b
    Example (one CI step):
      sst-vault run --stage prod --lock-timeout 600 -- npx sst deploy --stage prod
    """
    import sys

    from vault import runner
    from vault.keyenv import reexec_without_secrets
    from vault.lock import DEFAULT_TTL

    # Linux: COMMAND could read our start-up environment in /proc; start again without the key.
    reexec_without_secrets(sys.argv[1:])
    project = ctx.project()
    result = runner.run(
        project,
        stage,
        command,
        lock_timeout=lock_timeout,
        lock_ttl=DEFAULT_TTL if lock_ttl is None else lock_ttl,
        push=not no_push,
        use_lock=not no_lock,
        info=ctx.info,
    )
    if result.commit:
        ctx.info(
            f"sst-vault: committed {result.commit[:12]}" + (" and pushed" if result.pushed else "")
        )
    elif result.pushed:
        ctx.info("sst-vault: state unchanged; pushed earlier local commits")
    click_ctx.exit(result.code)
