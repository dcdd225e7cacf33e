"""prepare, commit and status: moving SST state between the SST home and the repo.

The operations' public face: one module to import for the three commands (`run`, the CLI and
library users call them here). Each idea lives in its own module: the sync records in
`records` (what was last synced into this home, so `status` is a three-way compare and
`prepare` can tell an uncommitted home change from a home that is merely behind), a stage's
files and the locks that guard them in `stagefiles`, `status`, `prepare`, `commit`, and the
one way a vault file is written in `sealing`. Each command holds a file lock on the SST home
(and `commit` one on the repository) so two processes never interleave.
"""

from __future__ import annotations

from vault.commit import CommitReport, commit, own_files
from vault.paths import FALLBACK_STAGE
from vault.prepare import PrepareReport, prepare
from vault.records import Records, SyncRecord, writer_name
from vault.sealing import seal_to_repo
from vault.stagefiles import FileAction, home_journal, home_lock, recover, repo_lock, resolve_stages
from vault.status import (
    CONFLICT,
    DAMAGED,
    DIVERGED,
    HOME_AHEAD,
    IN_SYNC,
    MISSING,
    REPO_AHEAD,
    REPO_BEHIND,
    UNCOMMITTED,
    KindStatus,
    status,
)

__all__ = [
    "CONFLICT",
    "DAMAGED",
    "DIVERGED",
    "FALLBACK_STAGE",
    "HOME_AHEAD",
    "IN_SYNC",
    "MISSING",
    "REPO_AHEAD",
    "REPO_BEHIND",
    "UNCOMMITTED",
    "CommitReport",
    "FileAction",
    "KindStatus",
    "PrepareReport",
    "Records",
    "SyncRecord",
    "commit",
    "home_journal",
    "home_lock",
    "own_files",
    "prepare",
    "recover",
    "repo_lock",
    "resolve_stages",
    "seal_to_repo",
    "status",
    "writer_name",
]
