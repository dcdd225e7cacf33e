"""Every help page teaches: each command and subcommand, groups included, shows an example
that invokes that very command. The walk follows click's command tree, so a new command or
subcommand without an example fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest

from vault.cli.main import cli

EXAMPLE_HEADING = re.compile(r"^\s*Examples?\b[^:\n]*:\s*$")


def walk(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=path[-1] if path else "sst-vault")
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, (path, name)
            yield from walk(sub, (*path, name))


def help_text(path: tuple[str, ...]) -> str:
    """The page `sst-vault PATH --help` prints, rendered by click in this process."""
    ctx = click.Context(cli, info_name="sst-vault")
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.get_command(ctx, name)  # type: ignore[assignment]
        ctx = click.Context(command, info_name=name, parent=ctx)
    return command.get_help(ctx)


def example_lines(page: str) -> list[str]:
    """The indented lines under each `Example:` / `Examples:` / `Example (…):` heading."""
    lines, found, inside = page.splitlines(), [], False
    for line in lines:
        if EXAMPLE_HEADING.match(line):
            inside = True
            continue
        if inside and line.strip() and line.startswith(" " * 4):
            found.append(line.strip())
        elif inside:
            inside = False
    return found


ALL = sorted(walk(cli), key=lambda item: item[0])


def test_the_walk_reaches_subcommands():
    paths = {path for path, _ in ALL}
    for expected in [("lock", "break"), ("key", "trust"), ("recipients", "add"), ("textconv",)]:
        assert expected in paths
    assert len(paths) > 25


@pytest.mark.parametrize("path", [path for path, _ in ALL], ids=lambda p: " ".join(p) or "(root)")
def test_help_has_an_example_of_that_command(path: tuple[str, ...]):
    page = help_text(path)
    examples = example_lines(page)
    assert examples, f"`sst-vault {' '.join(path)} --help` has no Example block:\n{page}"
    invocation = re.compile(r"(^|[\s$(|&;])sst-vault " + re.escape(" ".join(path)) + r"(\s|$)")
    if not path:  # the root page: any sst-vault command line is an example of it
        invocation = re.compile(r"(^|[\s$(|&;])sst-vault \S")
    assert any(invocation.search(line) for line in examples), (
        f"no example under `sst-vault {' '.join(path)} --help` runs that command:\n{page}"
    )
