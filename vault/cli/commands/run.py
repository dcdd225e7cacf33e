"""`run`: lock, pull, prepare, run the deploy command, commit, push, unlock (the CI step)."""

from __future__ import annotations

import click

from vault.cli.context import Context, pass_context
from vault.cli.options import lock_timeout_option, lock_ttl_option, push_timeout_option


# Options end at the command: `run --stage dev npx sst deploy --stage prod` deploys dev's state
# and hands `--stage prod` to sst (no interspersed options, so nothing after COMMAND is ours).
@click.command("run", context_settings={"allow_interspersed_args": False})
@click.option("--stage", required=True, help="The SST stage whose state is locked and synced.")
@lock_timeout_option
@lock_ttl_option
@push_timeout_option
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
    push_timeout: float | None,
    no_push: bool,
    no_lock: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND for STAGE with its state in place, then commit and push the new state.

    In order: take the deploy lock, pull, decrypt the stage's state into the SST home, run
    COMMAND (its environment holds no SST_VAULT_KEY, SST_VAULT_KEY_FILE or pin), commit
    whatever state it left (also when it failed), push (rebasing over unrelated commits),
    release the lock. SIGINT and SIGTERM go to COMMAND first; the commit and release still
    run. If sst-vault itself is killed, COMMAND is stopped too. Exits with COMMAND's code.

    Everything from COMMAND on belongs to COMMAND, with or without `--`: sst-vault's options
    go before it. In CI (`CI` set) a missing remote is an error unless --no-lock --no-push.
    A state that cannot reach the branch is pushed to a rescue ref and the lock stays held
    (see `sst-vault rescue --help`).

    \b
    Examples (one CI step):
      sst-vault run --stage prod --lock-timeout 600 -- npx sst deploy --stage prod
      sst-vault run --stage pr-42 npx sst deploy --stage pr-42
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
        push_timeout=push_timeout,
        info=ctx.info,
    )
    if result.commit:
        ctx.info(
            f"sst-vault: committed {result.commit[:12]}" + (" and pushed" if result.pushed else "")
        )
    elif result.pushed:
        ctx.info("sst-vault: state unchanged; pushed earlier local commits")
    click_ctx.exit(result.code)
