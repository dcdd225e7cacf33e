"""`setup-git`: register the git diff driver in this clone."""

from __future__ import annotations

import click

from vault.cli.context import Context, pass_context


@click.command("setup-git")
@pass_context
def setup_git_cmd(ctx: Context) -> None:
    """Register the diff driver so `git diff` and `git log -p` show decrypted state.

    `init` does this in the clone it runs in; every other clone runs `setup-git` once
    (the driver lives in .git/config, which git never shares). Without a key the driver
    shows only the clear header (stage, kind, serial, writer). The driver is
    `sst-vault textconv`, found through PATH, so it survives a reinstall. Also upgrades the
    `.gitattributes` line of a vault made before the driver existed.

    \b
    Example:
      git clone … && cd … && sst-vault setup-git && git log -p infra/state
    """
    from vault import gitsetup

    project = ctx.project()
    report = gitsetup.setup_git(project)
    ctx.info(f"Registered diff.sst-vault.textconv = {report.command}")
    if not report.on_path:
        ctx.info(
            "Warning: `sst-vault` is not on PATH, so git cannot run the driver: put it on PATH "
            "(`pipx install …`, or activate its virtualenv), then check with `sst-vault doctor`"
        )
    if report.attributes_upgraded:
        ctx.info("Updated .gitattributes to use the driver; commit it.")
