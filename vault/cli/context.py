"""What the global options hand to every command."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pathlib import Path

    from vault.project import Project


@dataclass
class Context:
    """The global options, handed from the group to every command (`click.Context.obj`)."""

    project_dir: Path | None
    sst_home: Path | None
    verbose: int = 0
    quiet: bool = False

    @classmethod
    def from_options(
        cls, project: str | None, sst_home: str | None, *, verbose: int, quiet: bool
    ) -> Context:
        # pathlib is imported here, not at start-up: `sst-vault --help` stays fast.
        from pathlib import Path

        return cls(
            Path(project) if project else None,
            Path(sst_home) if sst_home else None,
            verbose=verbose,
            quiet=quiet,
        )

    def project(self) -> Project:
        from vault.project import Project

        return Project.open(self.project_dir, self.sst_home)

    def info(self, message: str) -> None:
        """Progress and advice go to stderr, so stdout stays for requested output."""
        if not self.quiet:
            click.echo(message, err=True)


pass_context = click.make_pass_decorator(Context)
