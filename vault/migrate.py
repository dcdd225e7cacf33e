"""`migrate`: adopt the plaintext recipe's layout (`<state_dir>/<kind>/<stage>.json`).

Each plaintext file is sealed into its vault file and verified to open to the same bytes
before anything is removed; then the plaintext leaves the tree and the index and one commit
records both. History is not rewritten (that is the user's call, with git filter-repo): the
report says how many commits still hold the plaintext, so the CLI can tell the user to treat
the secrets in it as leaked.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from vault import safefs
from vault.errors import RefusedError, UsageError
from vault.paths import KINDS, check_stage, check_state_dir
from vault.project import Project
from vault.sealing import Remedies, seal_to_repo, validate_state


@dataclass
class Migrated:
    stage: str
    kind: str
    source: Path
    action: str  # "sealed", "already in the vault"
    serial: int


@dataclass
class MigrateReport:
    source_dir: str
    migrated: list[Migrated] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    commit: str | None = None
    history_commits: int = 0  # commits that hold a version of the removed plaintext
    purge_globs: list[str] = field(default_factory=list)


def find_plaintext(project: Project, source_dir: str) -> tuple[list[tuple[str, str, Path]], list]:
    """(stage, kind, file) of the recipe's plaintext files, and files skipped with a reason."""
    found: list[tuple[str, str, Path]] = []
    skipped: list[tuple[Path, str]] = []
    for kind in KINDS:
        folder = project.root / source_dir / kind
        if not folder.is_dir() or folder.is_symlink():
            continue
        for path in sorted(folder.iterdir()):
            if not path.name.endswith(".json") or path.name.endswith(".json.vault"):
                continue
            if path.is_symlink() or not path.is_file():
                skipped.append((path, "not a regular file"))
                continue
            stage = path.name[: -len(".json")]
            try:
                check_stage(stage)
            except UsageError:
                skipped.append((path, f"{stage!r} is not an SST stage name"))
                continue
            found.append((stage, kind, path))
    return found, skipped


FROM_RECIPE = Remedies(
    json="restore it from git or remove it, then retry",
    passphrase="restore it from git or remove it, then retry",
    secret="remove it, then retry",
    empty_passphrase="empty",
)


def migrate(project: Project, source: str | None = None, *, force: bool = False) -> MigrateReport:
    """Seal the recipe's plaintext files, remove them from tree and index, commit."""
    from vault.commit import own_files
    from vault.gitsetup import append_block, gitattributes_block, gitignore_block
    from vault.gitstore import GitStore
    from vault.records import writer_name
    from vault.versions import WORK, Side, open_version

    source_dir = check_state_dir(source or project.config.state_dir)
    store = GitStore(project.root)
    report = MigrateReport(source_dir)
    found, report.skipped = find_plaintext(project, source_dir)
    if not found:
        raise UsageError(
            f"no plaintext state in {project.root / source_dir}/{{app,passphrase,secret}}/*.json",
            "nothing to migrate; `sst-vault scan` looks for plaintext anywhere in the repo",
        )
    key = project.keys.sealing
    writer = writer_name()
    work = Side(project, store.top, WORK)
    with safefs.exclusive(store.git_dir / "sst-vault.lock", "the repository"):
        plan = []
        for stage, kind, path in found:
            data = path.read_bytes()
            validate_state(kind, data, path, FROM_RECIPE)
            current = open_version(project, work.read(stage, kind), stage)
            serial = current.header.serial + 1 if current.header else 1
            if current.plain == data:
                report.migrated.append(
                    Migrated(stage, kind, path, "already in the vault", serial - 1)
                )
                continue
            if current.plain is not None and not force:
                raise RefusedError(
                    f"{path} differs from {project.repo.vault_file(kind, stage)}",
                    "compare them (`sst-vault diff` after `prepare`), remove the outdated one, "
                    "or pass --force to replace the vault file with the plaintext",
                )
            plan.append((stage, kind, path, data, serial))
        with safefs.Transaction() as txn:
            for stage, kind, path, data, serial in plan:
                _, pending = seal_to_repo(
                    project, key, stage, kind, io.BytesIO(data), serial=serial, writer=writer
                )
                txn.add(pending)
                report.migrated.append(Migrated(stage, kind, path, "sealed", serial))
            txn.commit()
        state_dir = project.config.state_dir
        blocks = [
            (".gitattributes", gitattributes_block(state_dir)),
            (".gitignore", gitignore_block(state_dir)),
        ]
        if source_dir != state_dir:
            blocks.append((".gitignore", gitignore_block(source_dir)))
        touched = {name for name, block in blocks if append_block(project.root / name, block)}
        plain_rels = [store.relative(p) for _, _, p in found]
        report.purge_globs = [f"{source_dir}/{k}/*.json" for k in KINDS]
        in_head = store.git(
            "ls-tree", "-r", "--name-only", "HEAD", "--", *plain_rels, check=False
        ).out.split("\n")
        in_head = [r for r in in_head if r]
        report.history_commits = int(
            store.git("rev-list", "--count", "--all", "--", *plain_rels, check=False).out.strip()
            or 0
        )
        store.git("rm", "--cached", "--quiet", "--ignore-unmatch", "--", *plain_rels)
        for _, _, path in found:
            path.unlink(missing_ok=True)
        vault_files = [project.repo.vault_file(m.kind, m.stage) for m in report.migrated]
        own = [f for f in own_files(project, store) if f.exists()]
        own += [project.root / name for name in touched]
        add = sorted({store.relative(p) for p in [*vault_files, *own]})
        store.git("-c", "core.loosecompression=0", "add", "--", *add)
        stages = sorted({m.stage for m in report.migrated})
        message = (
            f"sst-vault: migrate {project.app} state ({', '.join(stages)}) from plaintext\n\n"
            f"Sealed {len(plan)} file(s) from {source_dir}; the plaintext files are removed.\n"
            "Earlier commits still hold them."
        )
        paths = [*add, *in_head]
        if store.git("diff", "--cached", "--name-only", "--", *paths).out.strip():
            # --only: these paths alone, whatever else the user has staged.
            store.git("commit", "--quiet", "--no-verify", "--only", "-m", message, "--", *paths)
            report.commit = store.head()
    return report


def purge_command(report: MigrateReport) -> str:
    globs = " ".join(f"--path-glob '{g}'" for g in report.purge_globs)
    return f"git filter-repo --invert-paths {globs}"


__all__ = ["MigrateReport", "find_plaintext", "migrate", "purge_command"]
