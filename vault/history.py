"""Review and undo through git history: reading versions, decrypted diffs, log, rollback.

Nothing here writes plaintext anywhere but the SST home (`rollback --prepare` goes through
`sync.prepare`) and stdout, when a key holder asked for it. Passphrases are never printed;
`sst secret` values are masked unless asked for, and a masked value carries a short keyed
fingerprint (HMAC under the vault key, so it cannot be brute-forced without that key) so a
change of value still shows up in a diff. The git diff driver is in `gitsetup`.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import hmac
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vault import envelope, safefs
from vault.envelope import FileKey, Header
from vault.errors import (
    ConfigError,
    FileFormatError,
    RefusedError,
    UsageError,
    VaultError,
    WrongKeyError,
)
from vault.gitstore import git_run, iter_blobs, resolve_commit, show_blob
from vault.paths import KINDS, check_stage

if TYPE_CHECKING:
    from vault.project import Project
    from vault.sync import Records

SST_NONCE_SIZE = 12  # SST's secret files: 12-byte nonce, then AES-GCM under the passphrase
MASK_FP_LEN = 8
WORK = "work"  # a side of a diff: the working tree's vault files
HOME = "home"  # a side of a diff: the SST home's plaintext files


# --- reading one version of a stage --------------------------------------------------------


@dataclass
class Version:
    """One kind of one stage as one side of a comparison sees it."""

    kind: str
    label: str
    raw: bytes | None  # vault-file bytes (sealed) or the home's plaintext
    sealed: bool
    header: Header | None = None
    plain: bytes | None = None


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
        rel = _rel(project, self.top, project.repo.vault_parts(kind, stage))
        if self.where == WORK:
            raw = safefs.read_bytes(project.root, project.repo.vault_parts(kind, stage))
            return Version(kind, f"repo:{rel}", raw, sealed=True)
        raw = show_blob(self.top, self.where, rel)
        return Version(kind, f"{self.name}:{rel}", raw, sealed=True)


def _rel(project: Project, top: Path, parts: tuple[str, ...]) -> str:
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


def open_version(
    project: Project, version: Version, stage: str, *, past_keys: bool = True
) -> Version:
    """Decrypt a sealed version in place (header and plaintext); raises on a bad file."""
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
    version.header, version.plain = envelope.open_bytes(
        version.raw, key, version.label, app=project.app, stage=stage, kind=version.kind
    )
    return version


# --- rendering ------------------------------------------------------------------------------


class SecretsUnreadable(Exception):
    """Internal: a `secret` file that the given passphrase does not open."""


def open_sst_secrets(passphrase: bytes, data: bytes) -> dict[str, str]:
    """SST's secret file: nonce || AES-GCM(base64-decoded passphrase) of a JSON map."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        key = base64.b64decode(passphrase.strip(), validate=True)
        plain = AESGCM(key).decrypt(data[:SST_NONCE_SIZE], data[SST_NONCE_SIZE:], None)
        values = json.loads(plain)
    except (ValueError, InvalidTag, TypeError) as exc:
        raise SecretsUnreadable(type(exc).__name__) from None
    if not isinstance(values, dict):
        raise SecretsUnreadable("not a map")
    return {str(k): str(v) for k, v in values.items()}


def mask(key: FileKey, stage: str, name: str, value: str) -> str:
    """A masked secret value that still changes when the value does (keyed, not guessable)."""
    mac = hmac.new(key.fingerprint_key(), digestmod=hashlib.sha256)
    mac.update(b"sst-vault/1 secret value\0" + f"{stage}\0{name}\0".encode() + value.encode())
    return f"<hidden {mac.hexdigest()[:MASK_FP_LEN]}>"


def render_app(plain: bytes) -> list[str]:
    """Pretty-printed JSON (2-space indent, key order kept) of a checkpoint."""
    try:
        value = json.loads(plain)
    except (ValueError, RecursionError):
        return plain.decode(errors="replace").splitlines()
    return json.dumps(value, indent=2, ensure_ascii=False).splitlines()


def render_secrets(
    values: dict[str, str], key: FileKey, stage: str, show_secrets: bool
) -> list[str]:
    shown = {
        name: value if show_secrets else mask(key, stage, name, value)
        for name, value in sorted(values.items())
    }
    return json.dumps(shown, indent=2, ensure_ascii=False).splitlines()


def resource_count(plain: bytes) -> int | None:
    """How many resources the checkpoint's latest deployment holds."""
    try:
        checkpoint = json.loads(plain)["checkpoint"]
        latest = checkpoint.get("latest") or {}
        return len(latest.get("resources") or [])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


# --- diff -----------------------------------------------------------------------------------


@dataclass
class KindDiff:
    kind: str
    old_label: str
    new_label: str
    status: str  # "unchanged", "changed", "added", "removed", "absent"
    lines: list[str] = field(default_factory=list)
    note: str = ""


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
    old = {k: open_version(project, old_side.read(stage, k), stage) for k in KINDS}
    new = {k: open_version(project, new_side.read(stage, k), stage) for k in KINDS}
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


# --- log --------------------------------------------------------------------------------------


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


@dataclass
class LogReport:
    entries: list[LogEntry]
    key_problem: str | None = None  # why resource counts are missing, if they are


_STATUS = {"A": "added", "M": "changed", "T": "changed", "D": "removed"}


def log(project: Project, stage: str, max_count: int | None = None) -> LogReport:
    """The history of a stage's vault files, newest first."""
    from vault.gitstore import GitStore

    stage = check_stage(stage)
    top = GitStore(project.root).top
    rels = {_rel(project, top, project.repo.vault_parts(k, stage)): k for k in KINDS}
    fmt = "%x1e%H%x1f%an%x1f%ae%x1f%aI%x1f%s"
    out = git_run(
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
    ).stdout.decode(errors="replace")
    entries: list[LogEntry] = []
    app_blobs: list[str | None] = []  # the app file's blob at each entry
    new_blobs: list[dict[str, str]] = []  # kind -> blob written by each entry
    kind_of: dict[str, str] = {}
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
    for entry, app_sha, written in zip(entries, app_blobs, new_blobs, strict=True):
        for kind in entry.changed:
            found = blob_info.get(written.get(kind, ""))
            entry.serials[kind] = found.serial if found else None
        if app_sha and app_sha in blob_info:
            entry.serial, entry.resources = blob_info[app_sha].serial, blob_info[app_sha].resources
    entries.reverse()
    if max_count is not None:
        entries = entries[:max_count]
    return LogReport(entries, problem[0] if problem else None)


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
    return result


# --- rollback -------------------------------------------------------------------------------


@dataclass
class RollbackAction:
    kind: str
    action: str  # "restored", "unchanged", "kept" (absent at REV)
    serial: int | None = None
    from_serial: int | None = None


@dataclass
class RollbackReport:
    stage: str
    rev: str
    commit_id: str
    actions: list[RollbackAction] = field(default_factory=list)
    commit: str | None = None


def rollback(project: Project, stage: str, rev: str) -> RollbackReport:
    """Restore the stage's files as they were at `rev`, as a new commit with fresh serials.

    History is never rewritten: the restored plaintext is sealed again under the current key,
    with a serial above the current one, so every clone sees a newer state and `prepare`
    applies it.
    """
    from vault import sync
    from vault.gitstore import GitStore

    stage = check_stage(stage)
    store = GitStore(project.root)
    commit_id = resolve_commit(store.top, rev)
    report = RollbackReport(stage, rev, commit_id)
    key = project.keys.sealing
    paths = {k: project.repo.vault_file(k, stage) for k in KINDS}
    with safefs.exclusive(store.git_dir / "sst-vault.lock", "the repository"):
        dirty = git_run(
            store.top,
            "status",
            "--porcelain",
            "--",
            *(_rel(project, store.top, project.repo.vault_parts(k, stage)) for k in KINDS),
        ).stdout.decode()
        if dirty.strip():
            raise RefusedError(
                f"the vault files of {stage} have uncommitted changes",
                f"commit them (`sst-vault commit {stage}`) or restore them with "
                "`git checkout -- <file>` first",
            )
        old_side = Side(project, store.top, commit_id, rev)
        work_side = Side(project, store.top, WORK)
        olds = {k: old_side.read(stage, k) for k in KINDS}
        if all(v.raw is None for v in olds.values()):
            raise UsageError(
                f"stage {stage!r} has no vault files at {rev}",
                f"see `sst-vault log {stage}` for its commits",
            )
        records = sync.Records(project)
        writer = sync.writer_name()
        with safefs.Transaction() as txn:
            for kind in KINDS:
                report.actions.append(
                    _restore_one(
                        project,
                        records,
                        txn,
                        key,
                        stage,
                        olds[kind],
                        work_side.read(stage, kind),
                        writer,
                    )
                )
            if not any(a.action == "restored" for a in report.actions):
                return report
            txn.commit()
        restored = [a for a in report.actions if a.action == "restored"]
        summary = ", ".join(f"{a.kind} serial {a.from_serial} as {a.serial}" for a in restored)
        # `--to 1a2b3c4d` names the commit already: say it once; a branch, tag or HEAD~2 is
        # worth keeping next to the commit it meant at the time.
        target = (
            commit_id[:12] if commit_id.startswith(rev.lower()) else f"{rev} ({commit_id[:12]})"
        )
        message = f"sst-vault: roll back {project.app}/{stage} to {target}\n\n{summary}"
        report.commit = store.commit_paths([paths[a.kind] for a in restored], message)
    return report


def _restore_one(
    project: Project,
    records: Records,
    txn: safefs.Transaction,
    key: FileKey,
    stage: str,
    old: Version,
    current: Version,
    writer: str,
) -> RollbackAction:
    kind = old.kind
    if old.raw is None:
        return RollbackAction(kind, "kept")
    # Current keys only: a file sealed under a data key from before a rotation could have
    # been forged by a removed member who still knows that key.
    try:
        open_version(project, old, stage, past_keys=False)
    except WrongKeyError:
        key_id = envelope.read_header(io.BytesIO(old.raw), old.label)[0].key_id
        raise RefusedError(
            f"{old.label} is sealed under key id {key_id}, from before a key rotation",
            "rollback restores only versions under the vault's current keys (fernet: give the "
            "old key too in SST_VAULT_KEY); pick a later commit from `sst-vault log`",
        ) from None
    assert old.header is not None and old.plain is not None
    current_serial = 0
    if current.raw is not None:
        cur_header, _ = envelope.read_header(io.BytesIO(current.raw), current.label)
        envelope.check_header(cur_header, current.label, app=project.app, stage=stage, kind=kind)
        current_serial = cur_header.serial
        if cur_header.key_id == key.key_id and cur_header.fingerprint == envelope.fingerprint(
            key, old.plain
        ):
            return RollbackAction(kind, "unchanged", cur_header.serial, old.header.serial)
    record = records.get(stage, kind)
    serial = max(current_serial, record.serial if record else 0, old.header.serial) + 1
    from vault.sync import seal_to_repo

    _, pending = seal_to_repo(
        project, key, stage, kind, io.BytesIO(old.plain), serial=serial, writer=writer
    )
    txn.add(pending)
    return RollbackAction(kind, "restored", serial, old.header.serial)


__all__ = [
    "KindDiff",
    "LogEntry",
    "LogReport",
    "RollbackReport",
    "diff",
    "log",
    "rollback",
]
