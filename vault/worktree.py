"""What git's index and work tree say about the vault files: conflicts, uncommitted, stale locks.

`status` must not call a stage `in sync` when git disagrees: a vault file that is unmerged (a
conflicted merge, rebase or cherry-pick) is a `conflict`, one sealed in the work tree but not
committed is `uncommitted`. `commit`, `prepare` and `run` refuse an unmerged vault file, since
taking either side silently drops the other runner's state; `sst-vault resolve` picks one.
A git process killed mid-commit leaves `index.lock` or a ref's `.lock` behind, after which every
commit fails: `run` checks before it deploys, and every message names the file.

git runs through `gitstore.run_git` (its one environment and error policy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vault.errors import ConflictError
from vault.gitstore import GitNotFoundError, GitResult, lock_file_error, run_git
from vault.paths import KINDS, VAULT_SUFFIX
from vault.project import Project

CONFLICT = "conflict"
UNCOMMITTED = "uncommitted"
# XY of `git status --porcelain` for an unmerged path.
_UNMERGED = {"DD", "AU", "UD", "UA", "DU", "AA", "UU"}
CONFLICT_MARKER = b"<<<<<<< "


def _git(root: Path, *args: str) -> GitResult | None:
    try:
        # `git status` would otherwise refresh the index under index.lock, which makes a commit
        # that another process runs at this moment fail.
        return run_git(root, *args, check=False, env={"GIT_OPTIONAL_LOCKS": "0"})
    except GitNotFoundError:
        return None  # no git: nothing to say about the index
    # Any other OSError (fork refused: EAGAIN at pids.max) propagates: a git that did not run
    # said nothing, and taking that for "no conflict" let commit and prepare drop a side.


@dataclass
class TreeState:
    """Per (stage, kind): CONFLICT or UNCOMMITTED; plus where git keeps its files."""

    files: dict[tuple[str, str], str] = field(default_factory=dict)
    git_dir: Path | None = None
    common_dir: Path | None = None


def tree_state(project: Project) -> TreeState:
    """Read the index once for every vault file (no repository: nothing to report)."""
    state = TreeState()
    info = _git(project.root, "rev-parse", "--show-prefix", "--git-dir", "--git-common-dir")
    if info is None or info.code != 0:
        return state
    prefix, git_dir, common = ([*info.out.split("\n"), "", "", ""])[:3]
    state.git_dir = (project.root / git_dir).resolve()
    state.common_dir = (project.root / common).resolve()
    state_dir = project.config.state_dir
    out = _git(
        project.root,
        "status",
        "--porcelain=v1",
        "-z",
        "--no-renames",
        "--untracked-files=all",
        "--",
        state_dir,
    )
    if out is None or out.code != 0:
        return state
    base = f"{prefix}{state_dir}/"
    for item in out.out.split("\0"):
        if len(item) < 4:
            continue
        xy, path = item[:2], item[3:]
        found = _stage_kind(path, base)
        if found is None:
            continue
        state.files[found] = CONFLICT if xy in _UNMERGED else UNCOMMITTED
    return state


def _stage_kind(path: str, base: str) -> tuple[str, str] | None:
    if not path.startswith(base) or not path.endswith(VAULT_SUFFIX):
        return None
    kind, _, name = path[len(base) :].partition("/")
    if kind not in KINDS or "/" in name:
        return None
    return name[: -len(VAULT_SUFFIX)], kind


def resolve_hint(stage: str) -> str:
    return (
        f"keep one side with `sst-vault resolve {stage} --theirs` (the state being merged in) "
        f"or `sst-vault resolve {stage} --ours` (yours), then finish with `git commit` "
        "(or `git rebase --continue`)"
    )


# What git keeps in its directory while an operation is stopped on conflicts.
_IN_PROGRESS = (
    "MERGE_HEAD",
    "REBASE_HEAD",
    "CHERRY_PICK_HEAD",
    "REVERT_HEAD",
    "rebase-merge",
    "rebase-apply",
)


def git_dir_nearby(root: Path) -> Path | None:
    """The git directory above `root`, found without running git (None: ask git)."""
    for folder in (root, *root.parents):
        dot = folder / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file():  # a linked worktree or submodule: "gitdir: <path>"
            try:
                text = dot.read_text().strip()
            except OSError:
                return None
            if text.startswith("gitdir: "):
                return (folder / text[len("gitdir: ") :]).resolve()
            return None
    return None


def operation_in_progress(project: Project) -> bool:
    """Whether git stopped a merge, rebase, cherry-pick or revert here (cheap: a few stats).

    Unmerged index entries exist only then, so `prepare` (whose start-up time is a goal) asks
    git's index only in that case; conflict markers in a file are caught when it is read.
    """
    git_dir = git_dir_nearby(project.root)
    if git_dir is None:
        return True  # unknown layout: ask git
    return any((git_dir / name).exists() for name in _IN_PROGRESS)


def refuse_conflicts(
    project: Project, stages: list[str], command: str, *, quick: bool = False
) -> TreeState:
    """ConflictError when a vault file of `stages` is unmerged; else the state read.

    `quick`: skip git when no merge, rebase or cherry-pick is in progress (nothing to find).
    """
    if quick and not operation_in_progress(project):
        return TreeState()
    state = tree_state(project)
    for stage in stages:
        kinds = [k for k in KINDS if state.files.get((stage, k)) == CONFLICT]
        if kinds:
            path = project.repo.vault_file(kinds[0], stage)
            raise ConflictError(
                f"{path} has a merge conflict (two runners changed {stage}'s state); "
                f"`{command}` would drop one side",
                resolve_hint(stage),
            )
    return state


def stale_locks(state: TreeState) -> list[Path]:
    """Lock files that make the next commit fail: the index's, HEAD's, the branch's."""
    if state.git_dir is None or state.common_dir is None:
        return []
    candidates = [state.git_dir / "index.lock", state.git_dir / "HEAD.lock"]
    candidates.append(state.common_dir / "packed-refs.lock")
    head = state.git_dir / "HEAD"
    try:
        ref = head.read_text().strip()
    except OSError:
        ref = ""
    if ref.startswith("ref: refs/"):
        candidates.append(state.common_dir / f"{ref[5:]}.lock")
    return [c for c in candidates if c.is_file()]


def check_can_commit(project: Project, stages: list[str], command: str) -> None:
    """Refuse before anything changes when the state could not be committed afterwards.

    Call it holding the repository's file lock (`stagefiles.repo_lock`): a lock file of another
    sst-vault's running commit must not look stale.
    """
    state = refuse_conflicts(project, stages, command)
    locks = stale_locks(state)
    if locks:
        raise lock_file_error(locks[0])
