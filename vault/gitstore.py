"""Where vault files are stored: the current branch of the project's git repository.

This is the one seam for the storage location (DESIGN.md: a later mode keeps vault files on a
dedicated state branch). Everything here runs real git through GitPython; it stages exactly
the paths it is given and never runs `git add .`. The secret key never reaches git: it was
removed from this process's environment when it was read (`vault.keys.find_source`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from vault.errors import ConfigError, GitError

if TYPE_CHECKING:
    import git

# Commits made by sst-vault when the user has no git identity (a bare CI runner).
FALLBACK_NAME = "sst-vault"
FALLBACK_EMAIL = "sst-vault@localhost"


class GitStore:
    """The git repository that holds a project's vault files."""

    def __init__(self, project: Path) -> None:
        import git

        try:
            self.repo: git.Repo = git.Repo(project, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise ConfigError(
                f"{project} is not inside a git repository", "run `git init` there first"
            ) from None
        if self.repo.bare or self.repo.working_tree_dir is None:
            raise ConfigError(f"{project}: the repository is bare", "use a clone with a work tree")
        self.top = Path(self.repo.working_tree_dir).resolve()

    def relative(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.top).as_posix()
        except ValueError:
            raise ConfigError(f"{path} is outside the repository {self.top}") from None

    @property
    def git_dir(self) -> Path:
        return Path(self.repo.git_dir)

    def _run(self, *args: str, **kwargs: object) -> str:
        import git

        try:
            return self.repo.git.execute(["git", *args], env=self._env(), **kwargs)  # type: ignore[call-overload]
        except git.GitCommandError as exc:
            detail = (exc.stderr or exc.stdout or "").strip().splitlines()
            last = detail[-1].strip() if detail else str(exc.status)
            raise GitError(
                f"git {args[0]} failed: {last.removeprefix('stderr: ').strip(chr(39))}"
            ) from None

    def _env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if not self._has_identity():
            env.update(
                GIT_AUTHOR_NAME=FALLBACK_NAME,
                GIT_AUTHOR_EMAIL=FALLBACK_EMAIL,
                GIT_COMMITTER_NAME=FALLBACK_NAME,
                GIT_COMMITTER_EMAIL=FALLBACK_EMAIL,
            )
        return env

    def _has_identity(self) -> bool:
        if getattr(self, "_identity", None) is None:
            reader = self.repo.config_reader()
            name = reader.get_value("user", "name", default="") or os.environ.get("GIT_AUTHOR_NAME")
            email = reader.get_value("user", "email", default="") or os.environ.get(
                "GIT_AUTHOR_EMAIL"
            )
            self._identity = bool(name and email)
        return bool(self._identity)

    def commit_paths(self, paths: Iterable[Path], message: str) -> str | None:
        """Stage and commit exactly `paths` (other staged work stays staged, uncommitted).

        Returns the new commit id, or None when these paths do not differ from HEAD.
        """
        rel = sorted({self.relative(p) for p in paths})
        if not rel:
            return None
        present = [r for r in rel if (self.top / r).exists()]
        tracked = set(self._run("ls-files", "--", *rel).splitlines()) if rel else set()
        # Ciphertext does not compress: storing it uncompressed saves most of `git add`.
        if present:
            self._run("-c", "core.loosecompression=0", "add", "--", *present)
        candidates = [r for r in rel if r in tracked or r in present]
        changed = self._run("diff", "--cached", "--name-only", "--", *candidates).splitlines()
        if not changed:
            return None
        # --only: commit these paths alone, whatever else the user has staged.
        self._run("commit", "--quiet", "--no-verify", "--only", "-m", message, "--", *changed)
        return self.repo.head.commit.hexsha

    def is_tracked_or_changed(self, path: Path) -> bool:
        rel = self.relative(path)
        return bool(self._run("status", "--porcelain", "--", rel).strip())

    def current_branch(self) -> str:
        try:
            return self.repo.active_branch.name
        except TypeError:
            raise GitError(
                "HEAD is detached", "check out a branch before committing state"
            ) from None

    def push(self, remote: str = "origin") -> None:
        """Push the current branch; a rejected push is reported, never forced."""
        branch = self.current_branch()
        if remote not in [r.name for r in self.repo.remotes]:
            raise GitError(f"no remote named {remote!r}", "add one with `git remote add`")
        self._run("push", "--porcelain", remote, f"HEAD:refs/heads/{branch}")

    def show(self, rev: str, path: Path) -> bytes | None:
        """The bytes of `path` at `rev`, or None when it did not exist there."""
        import git

        try:
            blob = self.repo.commit(rev).tree / self.relative(path)
        except (KeyError, ValueError, git.BadName):
            return None
        return blob.data_stream.read()
