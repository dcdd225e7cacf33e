"""`doctor`: explain the setup, one line per check, with a hint for anything not ok.

It names key sources (which variable, file or keyring backend) and never prints a key. A
`fail` is something that stops prepare/commit from working; a `warn` is worth fixing but
does not.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vault.errors import VaultError

if TYPE_CHECKING:
    from vault.gitstore import GitStore
    from vault.project import Project

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass
class Check:
    status: str
    name: str
    detail: str
    hint: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name}: {self.detail}"
        return f"{text} ({self.hint})" if self.hint else text


def run(project_dir: Path | None, sst_home: Path | None) -> list[Check]:
    """Every check, in the order a user would fix them."""
    from vault.project import Project

    checks: list[Check] = []
    env_key_present = _key_env_summary(checks)
    try:
        project = Project.open(project_dir, sst_home)
    except VaultError as exc:
        checks.insert(0, Check(FAIL, "config", exc.message, exc.hint or ""))
        return checks
    cfg = project.config
    checks.insert(
        0,
        Check(
            OK,
            "config",
            f"{project.repo.config_file} (app {cfg.app}, backend "
            f"{cfg.backend}, state_dir {cfg.state_dir})",
        ),
    )
    _keyring_check(checks, cfg.vault_id, needed=not env_key_present)
    _guard(checks, "key", lambda: _key_check(project))
    _guard(checks, "SST home", lambda: _home_check(project))
    store = _guard(checks, "git", lambda: _git_check(project))
    if store is not None:
        _guard(checks, "git attributes", lambda: _attributes_check(project))
        _guard(checks, "diff driver", lambda: _driver_check(project))
        _guard(checks, "remote", lambda: _remote_check(project, store))
        _guard(checks, "lock", lambda: _lock_checks(project, store))
    _guard(checks, "plaintext", lambda: _plaintext_check(project))
    _guard(checks, "interrupted", lambda: _interrupted_check(project))
    return checks


def _guard(checks: list[Check], name: str, fn: Callable[[], object]) -> object:
    """Run one check; its own failure is a `fail` line, never a crash of doctor."""
    try:
        result = fn()
    except VaultError as exc:
        checks.append(Check(FAIL, name, exc.message, exc.hint or ""))
        return None
    if isinstance(result, Check):
        checks.append(result)
    elif isinstance(result, list):
        checks.extend(r for r in result if isinstance(r, Check))
    elif isinstance(result, tuple):
        check, value = result
        checks.append(check)
        return value
    return result


def _key_env_summary(checks: list[Check]) -> bool:
    from vault.keys import ENV_KEY, ENV_KEY_FILE, ENV_KEY_ID, taken
    from vault.trust import ENV_PIN

    found = []
    key_text = taken(ENV_KEY)
    if key_text is not None:
        count = len([ln for ln in key_text.splitlines() if ln.strip()])
        found.append(f"${ENV_KEY} ({count} key{'s' if count != 1 else ''})")
    key_file = taken(ENV_KEY_FILE)
    if key_file:
        readable = os.access(Path(key_file).expanduser(), os.R_OK)
        found.append(f"${ENV_KEY_FILE}={key_file}" + ("" if readable else " (not readable)"))
    pinned = os.environ.get(ENV_PIN, "").strip()
    exact = os.environ.get(ENV_KEY_ID, "").strip()
    if found:
        checks.append(Check(OK, "key sources", ", ".join(found) + " (values not shown)"))
    else:
        checks.append(Check(OK, "key sources", f"no ${ENV_KEY} or ${ENV_KEY_FILE}; the OS keyring"))
    if pinned or exact:
        shown = [f"${ENV_PIN}={pinned}"] if pinned else []
        shown += [f"${ENV_KEY_ID}={exact}"] if exact else []
        checks.append(Check(OK, "key pin", ", ".join(shown)))
    elif os.environ.get("CI"):
        checks.append(
            Check(
                WARN,
                "key pin",
                f"${ENV_PIN} is not set in CI",
                "set it to the output of `sst-vault key pin`",
            )
        )
    return bool(found)


def _keyring_check(checks: list[Check], vault_id: str, needed: bool) -> None:
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        checks.append(Check(FAIL if needed else WARN, "keyring", "the keyring package is missing"))
        return
    try:
        backend = keyring.get_keyring()
    except Exception as exc:  # a misspelled PYTHON_KEYRING_BACKEND raises ModuleNotFoundError
        configured = os.environ.get("PYTHON_KEYRING_BACKEND")
        what = (
            f"PYTHON_KEYRING_BACKEND={configured!r} cannot be loaded"
            if configured
            else "the configured keyring backend (keyringrc.cfg) cannot be loaded"
        )
        checks.append(
            Check(
                FAIL if needed else WARN,
                "keyring",
                f"{what} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                "fix the name (e.g. keyring.backends.SecretService.Keyring) or unset it"
                if configured
                else "fix keyringrc.cfg (`keyring diagnose` shows where it is)",
            )
        )
        return
    name = f"{type(backend).__module__}.{type(backend).__name__}"
    if isinstance(backend, fail.Keyring):
        checks.append(
            Check(
                FAIL if needed else OK,
                "keyring",
                f"no usable backend ({name})",
                "install gnome-keyring/KeePassXC (Secret Service) or `pip install keyrings.alt`, "
                "or set SST_VAULT_KEY"
                if needed
                else "",
            )
        )
        return
    if needed:
        from vault.oskeyring import get as keyring_get

        try:
            has = keyring_get(vault_id) is not None
        except VaultError as exc:
            checks.append(Check(FAIL, "keyring", f"{name}: {exc.message}", exc.hint or ""))
            return
        if has:
            checks.append(Check(OK, "keyring", f"{name} holds this vault's key"))
        else:
            checks.append(
                Check(
                    FAIL,
                    "keyring",
                    f"{name} has no key for this vault",
                    "run `sst-vault key import`, or set SST_VAULT_KEY",
                )
            )
    else:
        checks.append(Check(OK, "keyring", f"{name} (not used: a key variable is set)"))


def _key_check(project: Project) -> Check:
    keys = project.keys
    found = f"{keys.origin} opens the vault (key id {keys.sealing.key_id})"
    if project.config.backend == "age":
        record = project.trusted.record
        found += (
            f"; signed key record verified: vault {record.identity}, entry {record.newest.seq},"
            f" recipients {', '.join(record.recipients)}"
        )
    return Check(OK, "key", found)


def _home_check(project: Project) -> list[Check]:
    from vault.paths import home_from_sst_binary, same_folder

    root = project.home.root
    stages = sorted(project.home.stages(project.app))
    if root.is_dir():
        found = f"stages here: {', '.join(stages)}" if stages else "no state of this app yet"
        result = [Check(OK, "SST home", f"{root} ({found})")]
    else:
        result = [
            Check(
                WARN,
                "SST home",
                f"{root} does not exist yet",
                "fine before the first deploy or `sst-vault prepare`",
            )
        ]
    if shutil.which("sst") is None:
        result.append(Check(OK, "sst", "not on PATH (home cross-check skipped)"))
        return result
    reported = home_from_sst_binary()
    if reported is None:
        result.append(Check(WARN, "sst", "`sst version --verbose` did not name its config folder"))
    elif same_folder(reported, root):
        result.append(Check(OK, "sst", f"`sst version --verbose` uses the same home {reported}"))
    else:
        result.append(
            Check(
                FAIL,
                "sst",
                f"`sst version --verbose` uses {reported}, not {root}",
                "pass --sst-home, or run both with the same HOME/XDG_CONFIG_HOME",
            )
        )
    return result


def _git_check(project: Project) -> tuple[Check, GitStore]:
    from vault.gitstore import GitStore

    store = GitStore(project.root)
    return Check(OK, "git", f"work tree {store.top}"), store


def _attributes_check(project: Project) -> list[Check]:
    from vault.gitsetup import DRIVER
    from vault.gitstore import run_git

    sample = project.repo.vault_file("app", "doctor")
    rel = os.path.relpath(sample, project.root)
    out = run_git(project.root, "check-attr", "text", "merge", "diff", "--", rel).out
    values = {}
    for line in out.splitlines():
        parts = line.rsplit(": ", 2)
        if len(parts) == 3:
            values[parts[1]] = parts[2]
    hint = "add the sst-vault block of .gitattributes (see README), or `sst-vault setup-git`"
    result = []
    if values.get("text") != "unset" or values.get("merge") != "unset":
        result.append(
            Check(
                FAIL,
                "git attributes",
                f"{rel}: text={values.get('text')}, merge={values.get('merge')} (must be unset)",
                hint,
            )
        )
    elif values.get("diff") == DRIVER:
        result.append(Check(OK, "git attributes", f"*.vault: -text -merge diff={DRIVER}"))
    elif values.get("diff") == "unset":
        result.append(
            Check(
                WARN,
                "git attributes",
                "*.vault: -diff (no decrypted diffs)",
                "run `sst-vault setup-git` to switch to the diff driver",
            )
        )
    else:
        result.append(Check(FAIL, "git attributes", f"*.vault: diff={values.get('diff')}", hint))
    ignored = (
        run_git(
            project.root,
            "check-ignore",
            "-q",
            "--no-index",
            "--",
            os.path.relpath(
                project.root / project.config.state_dir / "app" / "x.json", project.root
            ),
        ).code
        == 0
    )
    if ignored:
        result.append(Check(OK, "git ignore", f"{project.config.state_dir}/**/*.json is ignored"))
    else:
        result.append(
            Check(
                FAIL,
                "git ignore",
                f"plaintext under {project.config.state_dir} is not ignored",
                "add the sst-vault block of .gitignore (see README)",
            )
        )
    return result


def _driver_check(project: Project) -> Check:
    from vault.gitsetup import registered_driver

    command = registered_driver(project.root)
    if command is None:
        return Check(
            WARN,
            "diff driver",
            "not registered in this clone",
            "run `sst-vault setup-git` for decrypted `git diff`/`git log -p`",
        )
    from vault.gitsetup import DRIVER_COMMAND, check_driver, driver_on_path

    checked = check_driver(project.root, command)
    if not checked.works:
        if command == DRIVER_COMMAND and driver_on_path() is None:
            return Check(
                FAIL,
                "diff driver",
                f"textconv = {command}, but `sst-vault` is not on PATH "
                "(git diff and git log -p would fail)",
                "put sst-vault on PATH (`pipx install …`, or activate its virtualenv), "
                "then run `sst-vault doctor` again",
            )
        return Check(
            FAIL,
            "diff driver",
            f"textconv = {command} does not run ({checked.reason}; git diff and git log -p "
            "would fail)",
            "run `sst-vault setup-git`: it registers `sst-vault textconv`, found through PATH",
        )
    if command != DRIVER_COMMAND:
        return Check(
            WARN,
            "diff driver",
            f"textconv = {command} works, but a fixed path breaks when that installation "
            "moves or is rebuilt",
            "run `sst-vault setup-git`: it registers `sst-vault textconv`, found through PATH",
        )
    return Check(OK, "diff driver", f"textconv = {command}")


def _remote_check(project: Project, store: GitStore) -> Check:
    name = project.config.remote
    result = store.git("remote", "get-url", name, check=False)
    if result.code != 0:
        return Check(
            WARN,
            "remote",
            f"no remote {name!r}",
            "commit works; `--push`, `run` and the deploy lock need one",
        )
    return Check(OK, "remote", f"{name} {_safe_url(result.out.strip())}")


def _safe_url(url: str) -> str:
    """A remote URL without a password or token embedded in it."""
    try:
        parts = urllib.parse.urlsplit(url)
        secret = parts.password is not None or (
            parts.scheme.startswith("http") and parts.username is not None
        )
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    if secret:
        return urllib.parse.urlunsplit((parts.scheme, f"***@{host}{port}", parts.path, "", ""))
    return url


def _lock_checks(project: Project, store: GitStore) -> list[Check]:
    try:
        from vault import lock
    except ImportError:
        return []
    stages = sorted(project.repo.stages())
    if not stages:
        return []
    result = []
    for stage in stages:
        try:
            deploy_lock = lock.DeployLock(project, stage, store)
            info = deploy_lock.status()
        except VaultError as exc:
            result.append(Check(WARN, "lock", f"{stage}: {exc.message}", exc.hint or ""))
            continue
        except Exception as exc:  # a lock module mid-change must not break doctor
            what = f"{stage}: status unavailable ({type(exc).__name__})"
            result.append(Check(WARN, "lock", what))
            continue
        where = " (local only: no remote)" if getattr(deploy_lock, "local_only", False) else ""
        if info is None:
            result.append(Check(OK, "lock", f"{stage}: free{where}"))
        else:
            stale = info.expired() if hasattr(info, "expired") else False
            hint = f"`sst-vault lock break --stage {stage}` if that job is gone" if stale else ""
            if getattr(info, "rescue", None):  # its state waits on a rescue ref, not the branch
                stale, hint = True, f"land it: `sst-vault rescue land --stage {stage}`"
            result.append(
                Check(
                    WARN if stale else OK,
                    "lock",
                    f"{stage}: held by {info.describe()}{where}",
                    hint,
                )
            )
    return result


def _plaintext_check(project: Project) -> Check:
    from vault.scan import scan_tree

    findings = scan_tree(project.root)
    if not findings:
        return Check(OK, "plaintext", "no plaintext SST state in the work tree")
    names = ", ".join(f.path for f in findings[:3]) + (" …" if len(findings) > 3 else "")
    return Check(
        FAIL,
        "plaintext",
        f"{len(findings)} plaintext file(s): {names}",
        "run `sst-vault migrate`, or `sst-vault scan` for details",
    )


def _interrupted_check(project: Project) -> Check:
    """Temporary files and journals a killed sst-vault left (doctor only reports them)."""
    from vault import safefs
    from vault.stagefiles import home_journal, repo_journal
    from vault.worktree import git_dir_nearby, stale_locks, tree_state

    home = project.home
    found = safefs.find_temp(home.root, home.temp_folders) if home.root.is_dir() else []
    found += safefs.find_temp(project.root, project.repo.temp_folders)
    journals = home_journal(project).pending() if home.root.is_dir() else []
    git_dir = git_dir_nearby(project.root)
    repo_changes = repo_journal(project, git_dir).pending() if git_dir else []

    locks = stale_locks(tree_state(project))
    if locks:
        return Check(
            FAIL,
            "interrupted",
            f"git lock file {locks[0]} exists (a killed git, or one still running): "
            "commits will fail",
            f"if no git process is running here, `rm {locks[0]}`",
        )
    if not found and not journals and not repo_changes:
        return Check(OK, "interrupted", "no temporary files or unfinished changes left behind")
    parts = []
    if found:
        names = ", ".join(str(f) for f in found[:3]) + (" …" if len(found) > 3 else "")
        parts.append(f"{len(found)} temporary file(s) of a killed sst-vault: {names}")
    if journals:
        parts.append(f"an unfinished change of the SST home ({home_journal(project).folder})")
    if repo_changes and git_dir:
        where = repo_journal(project, git_dir).folder
        parts.append(f"an unfinished change of the vault files ({where})")
    return Check(
        WARN,
        "interrupted",
        "; ".join(parts),
        "the next `sst-vault status`, `prepare` or `commit` finishes the change and removes "
        "them (files in the SST home may hold plaintext state: do not copy them)",
    )


def healthy(checks: list[Check]) -> bool:
    return not any(c.status == FAIL for c in checks)


__all__ = ["Check", "healthy", "run"]
