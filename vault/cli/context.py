"""What the global options hand to every command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from vault.project import Project


@dataclass
class Context:
    project_dir: Path | None
    sst_home: Path | None
    verbose: int = 0
    quiet: bool = False

    def project(self) -> Project:
        from vault.project import Project

        return Project.open(self.project_dir, self.sst_home)

    def info(self, message: str) -> None:
        """Progress and advice go to stderr, so stdout stays for requested output."""
        if not self.quiet:
            click.echo(message, err=True)


pass_context = click.make_pass_decorator(Context)
