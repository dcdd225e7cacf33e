"""`migrate`: adopt the plaintext recipe's layout (`<state_dir>/<kind>/<stage>.json`).

Each plaintext file is sealed into its vault file and verified to open to the same bytes
before anything is removed; then the plaintext leaves the tree and the index and one commit
records both, as one `change.Change` (a failed commit puts the plaintext back). History is not
rewritten (that is the user's call, with git filter-repo): the report says how many commits
still hold the plaintext, so the CLI can tell the user to treat the secrets in it as leaked.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from vault.change import Change
from vault.errors import RefusedError, UsageError
from vault.paths import KINDS, check_stage, check_state_dir
from vault.project import Project
from vault.sealing import Remedies, validate_state


@dataclass
class Migrated:
    stage: str
    kind: str
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
    from vault.gitsetup import gitattributes_block, gitignore_block, with_block
    from vault.versions import WORK, RetiredKeys, Side, open_version

    source_dir = check_state_dir(source or project.config.state_dir)
    report = MigrateReport(source_dir)
    found, report.skipped = find_plaintext(project, source_dir)
    if not found:
        raise UsageError(
            f"no plaintext state in {project.root / source_dir}/{{app,passphrase,secret}}/*.json",
            "nothing to migrate; `sst-vault scan` looks for plaintext anywhere in the repo",
        )
    key = project.keys.sealing
    with Change(project) as change:
        store = change.store
        work = Side(project, store.top, WORK)
        retired = RetiredKeys(project)
        plan = []
        for stage, kind, path in found:
            data = path.read_bytes()
            validate_state(kind, data, path, FROM_RECIPE)
            current = open_version(project, work.read(stage, kind), stage, retired=retired)
            serial = current.header.serial + 1 if current.header else 1
            if current.plain == data:
                report.migrated.append(Migrated(stage, kind, "already in the vault", serial - 1))
                continue
            if current.plain is not None and not force:
                raise RefusedError(
                    f"{path} differs from {project.repo.vault_file(kind, stage)}",
                    "compare them (`sst-vault diff` after `prepare`), remove the outdated one, "
                    "or pass --force to replace the vault file with the plaintext",
                )
            plan.append((stage, kind, data, serial))
        for stage, kind, data, serial in plan:
            change.seal(stage, kind, io.BytesIO(data), key=key, serial=serial)
            report.migrated.append(Migrated(stage, kind, "sealed", serial))
        state_dir = project.config.state_dir
        blocks = {".gitattributes": [gitattributes_block(state_dir)]}
        blocks[".gitignore"] = [gitignore_block(state_dir)]
        if source_dir != state_dir:
            blocks[".gitignore"].append(gitignore_block(source_dir))
        for name, wanted in blocks.items():
            path = project.root / name
            was = text = path.read_text() if path.is_file() else ""
            for block in wanted:
                text = with_block(text, block)
            if text != was:
                change.put((name,), text.encode())
        plain_rels = [store.relative(p) for _, _, p in found]
        report.purge_globs = [f"{source_dir}/{k}/*.json" for k in KINDS]
        report.history_commits = int(
            store.git("rev-list", "--count", "--all", "--", *plain_rels, check=False).out.strip()
            or 0
        )
        for _, _, path in found:
            change.drop(path)
        stages = sorted({m.stage for m in report.migrated})
        message = (
            f"sst-vault: migrate {project.app} state ({', '.join(stages)}) from plaintext\n\n"
            f"Sealed {len(plan)} file(s) from {source_dir}; the plaintext files are removed.\n"
            "Earlier commits still hold them."
        )
        # Vault files already sealed by an earlier, interrupted migrate are committed too.
        vault_files = [project.repo.vault_file(m.kind, m.stage) for m in report.migrated]
        report.commit = change.commit(message, also=vault_files)
    return report


def purge_command(report: MigrateReport) -> str:
    globs = " ".join(f"--path-glob '{g}'" for g in report.purge_globs)
    return f"git filter-repo --invert-paths {globs}"


__all__ = ["MigrateReport", "find_plaintext", "migrate", "purge_command"]
