"""`resolve STAGE --ours|--theirs`: end a merge conflict on a stage's vault files, one side whole.

Two runners that deployed the same stage from the same serial make git stop on its vault files
(they are never merged: `-merge` in .gitattributes). Taking either side silently would drop the
other runner's state, so `commit`, `prepare` and `run` refuse until a person picks one here.

The chosen side is taken for every kind of the stage together (passphrase, state and secrets
from one deploy: a state never meets another deploy's passphrase), from the commit on that side
(`--ours`: HEAD; `--theirs`: MERGE_HEAD, or REBASE_HEAD / CHERRY_PICK_HEAD / REVERT_HEAD),
exactly as `git checkout --ours/--theirs` names the sides. Each kind whose two sides differ is
decrypted (authenticated under the vault's current keys) and re-sealed at
max(ours, theirs) + 1, so every clone, whichever side it had prepared, sees a newer serial and
`prepare` applies it. The files are staged (`git add`); the merge or rebase is finished by git.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from vault import envelope
from vault.errors import ConflictError, RefusedError, UsageError, WrongKeyError
from vault.paths import KINDS, check_stage
from vault.project import Project

SIDES = ("ours", "theirs")
# The commit of "theirs" while git stops in each operation, in the order git checks them.
_THEIRS_REFS = ("MERGE_HEAD", "REBASE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD")


@dataclass
class Resolved:
    kind: str
    action: str  # "resealed", "taken", "removed", "unchanged"
    serial: int | None = None


@dataclass
class ResolveReport:
    stage: str
    side: str
    rev: str
    files: list[Resolved] = field(default_factory=list)


def resolve(project: Project, stage: str, side: str) -> ResolveReport:
    """Keep `side` ("ours" or "theirs") of every vault file of `stage`; stage the result.

    Through `change.Change` like every write of the repository (its locks, its journal, all
    files or none), staged rather than committed: the merge, rebase or cherry-pick in progress
    is the user's to conclude.
    """
    from vault.change import Change
    from vault.worktree import CONFLICT, tree_state

    stage = check_stage(stage)
    if side not in SIDES:
        raise UsageError(f"unknown side {side!r}", "pass --ours or --theirs")
    with Change(project) as change:
        store = change.store
        top = store.top
        tree = tree_state(project)
        unmerged = [k for k in KINDS if tree.files.get((stage, k)) == CONFLICT]
        if not unmerged:
            raise UsageError(
                f"no vault file of {stage} is in a merge conflict",
                "`sst-vault status` shows `conflict` for the stages that need this",
            )
        theirs = next(
            (ref for ref in _THEIRS_REFS if (store.git_dir / ref).is_file()),
            None,
        )
        if theirs is None:
            raise RefusedError(
                f"the vault files of {stage} are unmerged, but no merge, rebase or cherry-pick "
                "is in progress",
                "restore each one with `git checkout <commit> -- <file>`, then `git add` it",
            )
        revs = {"ours": "HEAD", "theirs": theirs}
        report = ResolveReport(stage, side, revs[side])
        key = project.keys.sealing
        for kind in KINDS:
            path = project.repo.vault_file(kind, stage)
            parts = project.repo.vault_parts(kind, stage)
            rel = store.relative(path)
            blobs = {s: _blob(top, revs[s], rel) for s in SIDES}
            chosen, other = blobs[side], blobs["theirs" if side == "ours" else "ours"]
            if chosen == other and kind not in unmerged:
                continue
            if chosen is None:
                change.drop(path)
                report.files.append(Resolved(kind, "taken" if other is None else "removed"))
            elif chosen == other or other is None:
                change.put(parts, chosen)
                report.files.append(Resolved(kind, "taken"))
            else:
                serial = max(_serial(project, b, rel, stage, kind) for b in (chosen, other)) + 1
                plain = _open(project, chosen, f"{revs[side]}:{rel}", stage, kind)
                change.seal(stage, kind, io.BytesIO(plain), key=key, serial=serial)
                report.files.append(Resolved(kind, "resealed", serial))
        change.stage()
    return report


def _blob(top: Path, rev: str, rel: str) -> bytes | None:
    from vault.gitstore import run_git

    proc = run_git(top, "cat-file", "blob", f"{rev}:{rel}", check=False)
    return proc.stdout if proc.code == 0 else None


def _serial(project: Project, raw: bytes, label: str, stage: str, kind: str) -> int:
    header, _ = envelope.read_header(io.BytesIO(raw), label)
    envelope.check_header(header, label, app=project.app, stage=stage, kind=kind)
    return header.serial


def _open(project: Project, raw: bytes, label: str, stage: str, kind: str) -> bytes:
    """The chosen side's plaintext, authenticated under one of the vault's current keys."""
    if raw.startswith(b"<<<<<<< "):
        raise ConflictError(f"{label} holds conflict markers", "pick the other side")
    header, _ = envelope.read_header(io.BytesIO(raw), label)
    key = project.keys.for_id(header.key_id)
    if key is None:
        raise WrongKeyError(
            label,
            f"sealed under key id {header.key_id}, not a current key of this vault",
            "pull the latest key changes, or pick the other side",
        )
    out = io.BytesIO()
    envelope.open_(io.BytesIO(raw), out, key, label, app=project.app, stage=stage, kind=kind)
    return out.getvalue()
