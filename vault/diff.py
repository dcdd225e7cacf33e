"""`diff`: decrypted differences of a stage between two sides (home, work tree, commits).

Nothing is written: the result goes to stdout, when a key holder asked for it. A passphrase
is shown as changed or not, never printed; `sst secret` values are masked unless asked for.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vault.envelope import FileKey
from vault.errors import UsageError
from vault.paths import KINDS, check_stage
from vault.rendering import SecretsUnreadable, open_sst_secrets, render_app, render_secrets
from vault.versions import RetiredKeys, Side, Version, open_version, parse_range

if TYPE_CHECKING:
    from vault.project import Project


@dataclass
class KindDiff:
    kind: str
    old_label: str
    new_label: str
    status: str  # "unchanged", "changed", "added", "removed", "absent"
    lines: list[str] = field(default_factory=list)
    note: str = ""


def diff(
    project: Project,
    stage: str,
    rev: str | None = None,
    kinds: Iterable[str] = KINDS,
    *,
    show_secrets: bool = False,
) -> list[KindDiff]:
    """Decrypted differences of a stage between two sides (see `parse_range`)."""
    from vault.gitstore import GitStore

    stage = check_stage(stage)
    top = GitStore(project.root).top
    (old_where, old_name), (new_where, new_name) = parse_range(top, rev)
    old_side = Side(project, top, old_where, old_name)
    new_side = Side(project, top, new_where, new_name)
    retired = RetiredKeys(project)
    old = {k: open_version(project, old_side.read(stage, k), stage, retired=retired) for k in KINDS}
    new = {k: open_version(project, new_side.read(stage, k), stage, retired=retired) for k in KINDS}
    if all(v.plain is None for v in (*old.values(), *new.values())):
        known = sorted(project.repo.stages() | project.home.stages(project.app))
        raise UsageError(
            f"stage {stage!r} has no state on either side",
            f"known stages: {', '.join(known)}" if known else "check the stage name",
        )
    key = project.keys.sealing
    return [_diff_kind(old[k], new[k], old, new, key, stage, show_secrets) for k in kinds]


def _status(a: bytes | None, b: bytes | None) -> str:
    if a is None and b is None:
        return "absent"
    if a is None:
        return "added"
    if b is None:
        return "removed"
    return "unchanged" if a == b else "changed"


def _diff_kind(
    old: Version,
    new: Version,
    old_all: dict[str, Version],
    new_all: dict[str, Version],
    key: FileKey,
    stage: str,
    show_secrets: bool,
) -> KindDiff:
    result = KindDiff(old.kind, old.label, new.label, _status(old.plain, new.plain))
    if result.status in ("absent", "unchanged") or old.kind == "passphrase":
        return result  # a passphrase is shown as changed or not, never printed

    def lines(version: Version, side: dict[str, Version]) -> list[str]:
        if version.plain is None:
            return []
        if version.kind == "app":
            return render_app(version.plain)
        passphrase = side["passphrase"].plain
        try:
            if passphrase is None:
                raise SecretsUnreadable("no passphrase")
            values = open_sst_secrets(passphrase, version.plain)
        except SecretsUnreadable:
            result.note = "a secret file could not be opened with its stage's passphrase"
            return [f"(SST secret file, {len(version.plain)} bytes, not opened)"]
        return render_secrets(values, key, stage, show_secrets)

    before, after = lines(old, old_all), lines(new, new_all)
    result.lines = list(difflib.unified_diff(before, after, old.label, new.label, lineterm="", n=3))
    if not result.lines:
        result.note = result.note or "same content, different formatting or encoding"
    return result


__all__ = ["KindDiff", "diff"]
