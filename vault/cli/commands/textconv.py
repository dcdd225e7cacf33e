"""`textconv FILE` (hidden): the git diff driver for `*.vault` files."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vault.cli.context import Context, pass_context


@click.command("textconv", hidden=True)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_context
def textconv_cmd(ctx: Context, file: Path) -> None:
    """Print FILE decrypted for `git diff` (the header alone without a key); always exits 0.

    Registered by `init` and `setup-git` as `diff.sst-vault.textconv`.

    \b
    Example:
      sst-vault textconv infra/state/app/prod.json.vault | jq .checkpoint.latest
    """
    from vault import gitsetup

    text = gitsetup.textconv(file, ctx.project_dir or Path.cwd(), ctx.sst_home)
    sys.stdout.write(text)
    sys.stdout.flush()
