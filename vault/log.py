"""`log`: the commits that changed a stage's vault files, with serials and resource counts.

One `git log --raw` and one batch read of the blobs; a version that does not open only loses
its resource count (the reason is reported once).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vault import envelope
from vault.errors import FileFormatError, VaultError
from vault.gitstore import iter_blobs, run_git
from vault.paths import KINDS, check_stage
from vault.rendering import resource_count
from vault.versions import RetiredKeys, history_key, repo_rel

if TYPE_CHECKING:
    from vault.project import Project


@dataclass
class LogEntry:
    commit: str
    author: str
    email: str
    date: str
    subject: str
    changed: dict[str, str] = field(default_factory=dict)  # kind -> added/changed/removed
    serials: dict[str, int | None] = field(default_factory=dict)  # of the changed kinds
    serial: int | None = None  # the app file's serial at this commit
    resources: int | None = None  # resources in the app checkpoint at this commit


@dataclass
class _BlobInfo:
    serial: int | None = None
    resources: int | None = None
    key_id: str | None = None


@dataclass
class LogReport:
    entries: list[LogEntry]
    key_problem: str | None = None  # why resource counts are missing, if they are
    hidden: str | None = None  # why a version's resource count is not shown (a retired key)


_STATUS = {"A": "added", "M": "changed", "T": "changed", "D": "removed"}


def log(project: Project, stage: str, max_count: int | None = None) -> LogReport:
    """The history of a stage's vault files, newest first."""
    from vault.gitstore import GitStore

    stage = check_stage(stage)
    top = GitStore(project.root).top
    rels = {repo_rel(project, top, project.repo.vault_parts(k, stage)): k for k in KINDS}
    fmt = "%x1e%H%x1f%an%x1f%ae%x1f%aI%x1f%s"
    out = run_git(
        top,
        "log",
        "--reverse",
        f"--format={fmt}",
        "--raw",
        "--no-abbrev",
        "--no-renames",
        "--diff-merges=first-parent",
        "--",
        *rels,
    ).out
    entries: list[LogEntry] = []
    app_blobs: list[str | None] = []  # the app file's blob at each entry
    new_blobs: list[dict[str, str]] = []  # kind -> blob written by each entry
    kind_of: dict[str, str] = {}
    first_writer: dict[str, str] = {}  # blob -> the commit that first wrote it
    app_blob: str | None = None
    for record in out.split("\x1e")[1:]:
        meta, _, raw = record.partition("\n")
        commit, author, email, date, subject = ([*meta.split("\x1f"), "", "", "", ""])[:5]
        entry = LogEntry(commit, author, email, date, subject)
        written: dict[str, str] = {}
        for line in raw.splitlines():
            info, _, path = line.partition("\t")
            parts = info.split()
            kind = rels.get(path)
            if not line.startswith(":") or kind is None or len(parts) < 5:
                continue
            status = _STATUS.get(parts[4][0], "changed")
            entry.changed[kind] = status
            if status != "removed":
                written[kind] = parts[3]
                kind_of[parts[3]] = kind
                first_writer.setdefault(parts[3], commit)
            if kind == "app":
                app_blob = written.get("app")
        if entry.changed:
            entry.changed = {k: entry.changed[k] for k in KINDS if k in entry.changed}
            entries.append(entry)
            app_blobs.append(app_blob)
            new_blobs.append(written)
    blob_info: dict[str, _BlobInfo] = {}
    problem: list[str] = []
    for sha, data in iter_blobs(top, kind_of):
        blob_info[sha] = _blob_info(project, stage, kind_of[sha], data, problem)
    retired = RetiredKeys(project)
    hidden: str | None = None
    for entry, app_sha, written in zip(entries, app_blobs, new_blobs, strict=True):
        for kind in entry.changed:
            found = blob_info.get(written.get(kind, ""))
            entry.serials[kind] = found.serial if found else None
        if app_sha and app_sha in blob_info:
            info = blob_info[app_sha]
            entry.serial, entry.resources = info.serial, info.resources
            refused = info.key_id and retired.refusal(info.key_id, first_writer[app_sha])
            if refused:
                entry.resources = None
                hidden = hidden or f"{first_writer[app_sha][:12]}: {refused}"
    entries.reverse()
    if max_count is not None:
        entries = entries[:max_count]
    return LogReport(entries, problem[0] if problem else None, hidden)


def _blob_info(
    project: Project, stage: str, kind: str, data: bytes | None, problem: list[str]
) -> _BlobInfo:
    result = _BlobInfo()
    if data is None:
        return result
    try:
        header, _ = envelope.read_header(io.BytesIO(data), f"{kind}/{stage}")
    except FileFormatError:
        return result
    result.serial = header.serial
    if kind != "app" or problem:
        return result
    try:
        key = history_key(project, header.key_id)
        if key is None:
            return result
        _, plain = envelope.open_bytes(
            data, key, f"{kind}/{stage}", app=project.app, stage=stage, kind=kind
        )
    except FileFormatError:
        return result
    except VaultError as exc:
        problem.append(str(exc))
        return result
    result.resources = resource_count(plain)
    result.key_id = header.key_id
    return result


__all__ = ["LogEntry", "LogReport", "log"]
