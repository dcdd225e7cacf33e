"""`status`: the three-way state of each stage and kind (vault file, SST home, last sync), with git.

Read-only: it finishes a killed prepare or commit first (taking the locks only then), and
opens vault bodies only with `verify`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vault.errors import ConflictError, FileFormatError
from vault.paths import KINDS, check_stage
from vault.project import Project
from vault.records import Records, writer_name
from vault.stagefiles import (
    HomeFile,
    home_changed,
    read_repo_header,
    recover,
    repo_changed,
    verify_repo_file,
)

IN_SYNC = "in sync"
HOME_AHEAD = "home ahead"
REPO_AHEAD = "repo ahead"
DIVERGED = "diverged"
MISSING = "missing"
DAMAGED = "damaged"  # only `status --verify` opens bodies, so only it can say this
REPO_BEHIND = "repo behind"  # same content, but a lower serial than last synced here
CONFLICT = "conflict"  # the vault file is unmerged in git (or holds conflict markers)
UNCOMMITTED = "uncommitted"  # sealed in the work tree, in sync with the home, not in git yet


@dataclass
class KindStatus:
    stage: str
    kind: str
    state: str
    repo_serial: int | None = None
    synced_serial: int | None = None
    home_present: bool = False
    repo_writer: str | None = None
    repo_time: str | None = None
    problem: str | None = None  # why a damaged vault file does not open


def status(
    project: Project, stages: Iterable[str] = (), *, verify: bool = False
) -> list[KindStatus]:
    """The three-way state of each stage and kind, from clear headers, fingerprints and git.

    Without `verify` this reads, per kind: the vault file's clear header (serial, fingerprint,
    key id: not authenticated until the body is), the SST home file (its keyed fingerprint),
    the sync record (serial and fingerprint last synced here) and git's index (unmerged or
    uncommitted vault files). A header whose serial disagrees with the record is never
    `in sync`; a body damaged behind an intact header is found only by `verify`, which
    decrypts every vault file.
    """
    from vault.worktree import CONFLICT as TREE_CONFLICT
    from vault.worktree import tree_state

    stages = [check_stage(s) for s in stages]
    tree = tree_state(project)
    if recover(project, tree.git_dir):
        tree = tree_state(project)  # a killed change was just rolled forward
    records = Records(project)
    if not stages:
        stages = sorted(
            project.repo.stages()
            | project.home.stages(project.app)
            | records.stages()
            | {stage for stage, _kind in tree.files}
        )
    if verify:
        # Unlock first: a key that is not a recipient (or a pin that fails) is that, with the
        # message prepare gives, not every vault file reported as damaged.
        project.keys  # noqa: B018
    rows: list[KindStatus] = []
    for stage in stages:
        stage_rows = []
        for kind in KINDS:
            git_state = tree.files.get((stage, kind))
            row = _kind_status(project, records, stage, kind, verify, git_state)
            if row is None:
                continue
            if git_state == TREE_CONFLICT:
                row.state = CONFLICT
            elif git_state is not None and row.state == IN_SYNC:
                # Sealed from this very home, but git does not have it: a commit that failed
                # or was killed after sealing. Never "in sync": the next clone would not see it.
                row.state = UNCOMMITTED
            stage_rows.append(row)
        rows += stage_rows or [KindStatus(stage, "-", MISSING)]
    return rows


def _kind_status(
    project: Project,
    records: Records,
    stage: str,
    kind: str,
    verify: bool,
    git_state: str | None,
) -> KindStatus | None:
    """One row; `git_state` is what git's index says of the vault file (worktree.tree_state)."""
    from vault.worktree import CONFLICT as TREE_CONFLICT
    from vault.worktree import UNCOMMITTED as TREE_UNCOMMITTED

    conflict = git_state == TREE_CONFLICT
    home = HomeFile(project, stage, kind)
    record = records.get(stage, kind)
    row = KindStatus(stage, kind, MISSING, home_present=home.exists)
    row.synced_serial = record.serial if record else None
    header = None
    try:
        found = read_repo_header(project, stage, kind)
        if found:
            header, handle = found
            handle.close()
            row.repo_serial, row.repo_writer = header.serial, header.writer
            row.repo_time = header.time
            if verify:
                key = project.keys.for_id(header.key_id) or project.keys.sealing
                verify_repo_file(project, key, stage, kind)
    except ConflictError as exc:
        row.state, row.problem = CONFLICT, exc.message
        return row
    except FileFormatError as exc:
        if conflict:
            return row  # git's side of the merge left in the file: the caller says conflict
        if not verify:
            raise
        row.state, row.problem = DAMAGED, f"{exc.reason}: {exc.detail}"
        return row
    if header is None and not home.exists:
        return row if conflict else None
    if header is None:
        row.state = HOME_AHEAD
    elif not home.exists:
        row.state = REPO_AHEAD
    elif home.fingerprint(project.keys.for_id(header.key_id)) == header.fingerprint:
        # Same content; the serial must agree with the last sync too, or the header says
        # something this home never saw (a newer re-seal, an older checkout, an edit).
        # A commit killed between sealing and saving its records leaves this home's own
        # header, uncommitted: the caller reports that as UNCOMMITTED.
        sealed_here = git_state == TREE_UNCOMMITTED and header.writer == writer_name()
        if record is None or record.serial == header.serial or sealed_here:
            row.state = IN_SYNC
        elif header.serial > record.serial:
            row.state = REPO_AHEAD
        else:
            row.state = REPO_BEHIND
    else:
        home_moved = home_changed(home, record, project)
        if home_moved and repo_changed(header, record):
            row.state = DIVERGED
        elif home_moved:
            row.state = HOME_AHEAD
        elif record is not None and header.serial < record.serial:
            row.state = REPO_BEHIND
        else:
            row.state = REPO_AHEAD
    return row
