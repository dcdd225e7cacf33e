"""One stage's files as one side of a comparison sees them: the SST home, the work tree, or a
commit; decrypted with the keys that may *read* history (`history_key`), never for sealing.

`diff`, `log`, `rollback`, `migrate` and the git diff driver read versions this way.

A past data key opens a file only from a commit in the past of that key's retirement
(`RetiredKeys`): a removed member keeps the data key of before his removal and can still seal
with it, but nothing he commits afterwards is a proper ancestor of the genuine rotation. The
git diff driver, given the bytes without their commit, looks up the commits that hold them
(SECURITY.md, "History written by a removed member").
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vault import envelope, safefs
from vault.envelope import FileKey, Header
from vault.errors import ConfigError, TrustError, UsageError, WrongKeyError
from vault.gitstore import resolve_commit, run_git, shared_ancestors, show_blob

if TYPE_CHECKING:
    from vault.project import Project

WORK = "work"  # a side of a diff: the working tree's vault files
HOME = "home"  # a side of a diff: the SST home's plaintext files


@dataclass
class Version:
    """One kind of one stage as one side of a comparison sees it."""

    kind: str
    label: str
    raw: bytes | None  # vault-file bytes (sealed) or the home's plaintext
    sealed: bool
    header: Header | None = None
    plain: bytes | None = None
    commit: str | None = None  # the commit it was read from (the work tree: HEAD's)


class Side:
    """Where a comparison reads a stage from: the SST home, the working tree, or a commit."""

    def __init__(self, project: Project, top: Path, where: str, name: str | None = None) -> None:
        self.project = project
        self.top = top
        self.where = where  # HOME, WORK, or a full commit id
        self.name = name or where

    def read(self, stage: str, kind: str) -> Version:
        project = self.project
        if self.where == HOME:
            home = project.home
            parts = home.state_parts(kind, project.app, stage)
            raw = safefs.read_bytes(home.root, parts) if home.root.is_dir() else None
            label = f"home:{home.state_file(kind, project.app, stage)}"
            return Version(kind, label, raw, sealed=False, plain=raw)
        rel = repo_rel(project, self.top, project.repo.vault_parts(kind, stage))
        if self.where == WORK:
            raw = safefs.read_bytes(project.root, project.repo.vault_parts(kind, stage))
            return Version(kind, f"repo:{rel}", raw, sealed=True, commit=self._head)
        raw = show_blob(self.top, self.where, rel)
        return Version(kind, f"{self.name}:{rel}", raw, sealed=True, commit=self.where)

    @functools.cached_property
    def _head(self) -> str | None:
        """HEAD's commit, asked once per side (migrate reads every stage's files from it)."""
        head = run_git(self.top, "rev-parse", "--verify", "-q", "HEAD", check=False)
        return head.out.strip() or None


def repo_rel(project: Project, top: Path, parts: tuple[str, ...]) -> str:
    """A repo path relative to the git top (only the project root is resolved, never a file)."""
    path = project.root.resolve().joinpath(*parts)
    try:
        return path.relative_to(top).as_posix()
    except ValueError:
        raise ConfigError(f"{path} is outside the repository {top}") from None


def history_key(project: Project, key_id: str) -> FileKey | None:
    """The key of `key_id` for *reading* history: a data key of the verified key record's
    chain (age) or one of the keys given (fernet), never one a writer put in history. Never for
    sealing or for state that reaches the SST home: rollback uses only the newest key."""
    return project.review_key(key_id)


class RetiredKeys:
    """Whether a file sealed under a past data key may be shown from a given commit.

    Only from a commit in the past of the rotation that retired that key: a proper ancestor of
    every commit, in any ref of the clone, whose key record has the retiring entry
    (`Trusted.retiring_commits`). A removed member keeps his old data key; whatever he commits
    afterwards, on top of the branch or on a branch forked before his removal and merged later
    (or checked out for review), is not in that past. One `git rev-list` per key.
    """

    def __init__(self, project: Project) -> None:
        self.project = project
        self._before: dict[str, set[str]] = {}

    def _before_retirement(self, key_id: str) -> set[str] | None:
        """The commits a file under `key_id` may come from; None when the key is not retired."""
        if self.project.config.backend != "age":
            return None  # fernet: every holder of a listed key is a member
        retiring = self.project.trusted.retiring_commits(key_id, self.project.root)
        if not retiring:
            return None
        if key_id not in self._before:
            self._before[key_id] = shared_ancestors(self.project.root, retiring)
        return self._before[key_id]

    def refusal(self, key_id: str, commit: str) -> str | None:
        """Why a file sealed under `key_id` in `commit` is not shown; None when it may be."""
        before = self._before_retirement(key_id)
        if before is None or commit in before:
            return None
        return (
            f"sealed under data key {key_id}, which a rotation retired, in commit {commit[:12]},"
            " which is not from before that rotation: it cannot be told from a state forged by a"
            " removed member, who keeps that key"
        )

    def blob_refusal(self, key_id: str, data: bytes, rel: str) -> str | None:
        """The same rule for a file given without its commit (git's diff driver): shown only
        when a commit that added or removed these exact bytes at `rel` (relative to the
        project) is from before the key's retirement. One `git log --find-object`, paid only by
        files under a retired key (a review of old history gets slower, never wrong).
        """
        before = self._before_retirement(key_id)
        if before is None:
            return None
        root = self.project.root
        blob = run_git(root, "hash-object", "--stdin", input=data).out.strip()
        found = run_git(root, "log", "--all", "--format=%H", f"--find-object={blob}", "--", rel)
        if set(found.out.split()) & before:
            return None
        return (
            f"sealed under data key {key_id}, which a rotation retired, and no commit that holds"
            " it is from before that rotation: it cannot be told from a state forged by a removed"
            " member"
        )


def open_version(
    project: Project,
    version: Version,
    stage: str,
    *,
    past_keys: bool = True,
    retired: RetiredKeys | None = None,
) -> Version:
    """Decrypt a sealed version in place (header and plaintext); raises on a bad file.

    `retired`: one `RetiredKeys` for every version a command opens, so its git lookups are
    made once (a new one per call otherwise).
    """
    if not version.sealed or version.raw is None:
        return version
    header, _ = envelope.read_header(io.BytesIO(version.raw), version.label)
    key = history_key(project, header.key_id) if past_keys else project.keys.for_id(header.key_id)
    if key is None:
        raise WrongKeyError(
            version.label,
            f"sealed under key id {header.key_id}, not under any key given",
            "the vault's key was rotated since; give the old key too (SST_VAULT_KEY, one a line)",
        )
    if past_keys and version.commit is not None:
        refused = (retired or RetiredKeys(project)).refusal(header.key_id, version.commit)
        if refused:
            raise TrustError(
                version.label,
                refused,
                "review who committed it (`git log -- <file>`); nothing of it reaches the SST home",
            )
    version.header, version.plain = envelope.open_bytes(
        version.raw, key, version.label, app=project.app, stage=stage, kind=version.kind
    )
    return version


def parse_range(top: Path, rev: str | None) -> tuple[tuple[str, str], tuple[str, str]]:
    """(old side, new side) as (where, display name): home vs repo, REV vs tree, A..B."""
    if rev is None:
        return (WORK, "repo"), (HOME, "home")
    if ".." in rev:
        if "..." in rev:
            raise UsageError(f"{rev!r}: use REV1..REV2", "three dots are not supported")
        old, new = rev.split("..", 1)
        old, new = old or "HEAD", new or "HEAD"
        return (resolve_commit(top, old), old), (resolve_commit(top, new), new)
    return (resolve_commit(top, rev), rev), (WORK, "repo")


__all__ = [
    "HOME",
    "WORK",
    "RetiredKeys",
    "Side",
    "Version",
    "history_key",
    "open_version",
    "parse_range",
    "repo_rel",
]
