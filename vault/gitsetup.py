"""How this clone's git shows vault files: the attribute and ignore blocks, the diff driver.

`init` and `migrate` append the blocks to `.gitattributes` and `.gitignore`; `commit` stages
those files only while HEAD lacks the blocks (`change.own_files`). The diff driver
(`sst-vault textconv`) is registered in the clone's own git config by `init` and `setup-git`,
and `doctor` checks that git can run it.

The driver runs inside `git diff`/`git log -p`: it must never make git fail, and never print
anything but the clear header to someone without a key. Its output is never cached by git
(`diff.sst-vault.cachetextconv` is left unset: a cache would be plaintext stored in
`refs/notes/textconv`).
"""

from __future__ import annotations

import io
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vault import envelope, safefs
from vault.envelope import Header
from vault.errors import ConfigError, FileFormatError, TrustError, VaultError, WrongKeyError
from vault.gitstore import git_env, run_git
from vault.paths import CONFIG_NAME
from vault.rendering import SecretsUnreadable, open_sst_secrets, render_app, render_secrets
from vault.versions import RetiredKeys, Version, history_key, open_version

if TYPE_CHECKING:
    from vault.project import Project

DRIVER = "sst-vault"
MARK = "# sst-vault"


# --- the attribute and ignore blocks ----------------------------------------------------------


def gitattributes_block(state_dir: str) -> str:
    return (
        f"{MARK}: encrypted SST state; never convert or merge it; `sst-vault setup-git` diffs it\n"
        f"{state_dir}/**/*.vault -text -merge diff=sst-vault\n"
        f"{state_dir}/data-key.age -text -merge\n"
        f"{state_dir}/key-record.jsonl -text -merge\n"
    )


def gitignore_block(state_dir: str) -> str:
    return (
        f"{MARK}: plaintext SST state must never be committed\n"
        f"{state_dir}/**/*.json\n"
        f"{state_dir}/**/.sst-vault-tmp-*\n"
    )


def append_block(path: Path, block: str) -> bool:
    """Append `block` to a text file unless it holds it already; True if the file changed."""
    current = path.read_text() if path.is_file() else ""
    text = with_block(current, block)
    if text == current:
        return False
    safefs.write_atomic(path.parent, (path.name,), text.encode(), 0o644)
    return True


def with_block(current: str, block: str) -> str:
    """A text file's contents with `block` appended, unless they hold it already."""
    if block in current:
        return current
    if current and not current.endswith("\n"):
        current += "\n"
    separator = "\n" if current else ""
    return current + separator + block


# --- the git diff driver ----------------------------------------------------------------------


DRIVER_COMMAND = "sst-vault textconv"


def driver_command() -> str:
    """`sst-vault textconv`, which git finds through PATH each time it runs the driver.

    Not an absolute path, neither of the script nor of the interpreter (`python -m vault`):
    a virtual environment that is moved or rebuilt, a pipx reinstall or a new Python version
    would leave git holding a path to nothing, and `git diff`/`git log -p` would stop with
    "fatal: unable to read files to diff". PATH is where the user's own `sst-vault` is found
    (pipx, an activated venv, CI's pip), the value is the same in every clone, and `doctor`
    runs the driver to check it (`check_driver`).
    """
    return DRIVER_COMMAND


def driver_on_path() -> str | None:
    """The `sst-vault` that git would run as the driver, or None."""
    return shutil.which("sst-vault")


@dataclass(frozen=True)
class DriverCheck:
    works: bool
    reason: str  # why it does not work ("" when it does)


def check_driver(root: Path, command: str) -> DriverCheck:
    """Run the registered driver the way git does (through the shell, the file appended) on an
    empty scratch file, with git's environment (no key): it must exit 0 and speak as sst-vault."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sst-vault-driver-") as scratch:
        probe = Path(scratch) / "probe.vault"
        probe.write_bytes(b"")
        try:
            proc = subprocess.run(
                f"{command} {shlex.quote(str(probe))}",
                shell=True,
                cwd=root,
                env=git_env(),
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return DriverCheck(False, _one_line(str(exc)) or type(exc).__name__)
    if proc.returncode != 0:
        said = proc.stderr.decode(errors="replace").strip().splitlines()
        return DriverCheck(
            False, f"exit {proc.returncode}" + (f": {_one_line(said[-1])}" if said else "")
        )
    if not proc.stdout.startswith(b"# sst-vault"):
        return DriverCheck(False, "it does not print what `sst-vault textconv` prints")
    return DriverCheck(True, "")


def register_diff_driver(root: Path) -> str:
    """Write `diff.sst-vault.textconv` (and `binary`) into the repository's own config."""
    command = driver_command()
    run_git(root, "config", "--local", f"diff.{DRIVER}.textconv", command)
    # binary: `git diff --no-textconv`, format-patch and apply treat vault files as binary.
    run_git(root, "config", "--local", f"diff.{DRIVER}.binary", "true")
    return command


def registered_driver(root: Path) -> str | None:
    value = run_git(root, "config", "--get", f"diff.{DRIVER}.textconv", check=False).out.strip()
    return value or None


def old_attributes_line(state_dir: str) -> str:
    """The `.gitattributes` line of vaults initialised before the diff driver existed."""
    return f"{state_dir}/**/*.vault -text -merge -diff"


def new_attributes_line(state_dir: str) -> str:
    return f"{state_dir}/**/*.vault -text -merge diff={DRIVER}"


@dataclass
class SetupReport:
    command: str
    attributes_upgraded: bool
    on_path: bool = True  # False: git cannot find `sst-vault` (see driver_command)


def setup_git(project: Project) -> SetupReport:
    """Register the diff driver in this clone; upgrade an old `-diff` attributes line."""
    path = project.root / ".gitattributes"
    upgraded = False
    old, new = (
        old_attributes_line(project.config.state_dir),
        new_attributes_line(project.config.state_dir),
    )
    text = path.read_text() if path.is_file() else ""
    if old in text.splitlines():
        lines = [new if line == old else line for line in text.splitlines()]
        safefs.write_atomic(
            project.root, (".gitattributes",), ("\n".join(lines) + "\n").encode(), 0o644
        )
        upgraded = True
    return SetupReport(
        register_diff_driver(project.root), upgraded, on_path=driver_on_path() is not None
    )


def textconv(path: Path, cwd: Path | None = None, sst_home: Path | None = None) -> str:
    """What `git diff` shows for one vault file. Never raises: on any failure, the header only."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"# sst-vault: cannot read the file ({exc.strerror})\n"
    try:
        header, _ = envelope.read_header(io.BytesIO(data), path.name)
    except FileFormatError as exc:
        return f"# sst-vault: {exc.reason} ({len(data)} bytes); contents not shown\n"
    except Exception:
        return f"# sst-vault: unreadable file ({len(data)} bytes); contents not shown\n"
    head = (
        f"# sst-vault {header.kind} of {header.app}/{header.stage}, serial {header.serial}, "
        f"written by {header.writer} at {header.time}\n"
    )
    try:
        body = _textconv_body(data, header, cwd or Path.cwd(), sst_home)
    except TrustError as exc:  # the file, not the setup: doctor would find nothing to fix
        return head + f"# not decrypted: {_one_line(exc.message)}\n"
    except VaultError as exc:
        return head + f"# not decrypted: {_one_line(exc.message)} (see `sst-vault doctor`)\n"
    except Exception as exc:  # the driver must never fail git; say only the error class
        return head + f"# not decrypted: {type(exc).__name__}\n"
    return head + body


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _textconv_body(data: bytes, header: Header, cwd: Path, sst_home: Path | None) -> str:
    project = _project_for(header.app, cwd, sst_home)
    key = history_key(project, header.key_id)
    if key is None:
        raise WrongKeyError("file", f"sealed under key id {header.key_id}, not under any key given")
    rel = "/".join(project.repo.vault_parts(header.kind, header.stage))
    refused = RetiredKeys(project).blob_refusal(header.key_id, data, rel)
    if refused:
        raise TrustError("file", refused)
    _, plain = envelope.open_bytes(
        data, key, "file", app=header.app, stage=header.stage, kind=header.kind
    )
    if header.kind == "app":
        lines = render_app(plain)
    elif header.kind == "passphrase":
        lines = [f"passphrase: (hidden; fingerprint {header.fingerprint[:12]})"]
    else:
        lines = _secret_lines(project, header.stage, plain)
    return "".join(f"{line}\n" for line in lines)


def _secret_lines(project: Project, stage: str, plain: bytes) -> list[str]:
    """A secret file's keys, values masked; its passphrase from the tree, else the SST home."""
    candidates: list[bytes] = []
    with_tree = Version("passphrase", "passphrase", None, sealed=True)
    with_tree.raw = safefs.read_bytes(project.root, project.repo.vault_parts("passphrase", stage))
    try:
        if with_tree.raw is not None:
            candidates.append(open_version(project, with_tree, stage).plain or b"")
    except VaultError:
        pass
    try:
        home = safefs.read_bytes(
            project.home.root, project.home.state_parts("passphrase", project.app, stage)
        )
        if home is not None:
            candidates.append(home)
    except (VaultError, OSError):
        pass
    for passphrase in candidates:
        try:
            values = open_sst_secrets(passphrase, plain)
        except SecretsUnreadable:
            continue
        return render_secrets(values, project.keys.sealing, stage, show_secrets=False)
    return [f"(SST secret file, {len(plain)} bytes: its stage's passphrase does not open it)"]


def _project_for(app: str, cwd: Path, sst_home: Path | None) -> Project:
    """The project of `app`: upward from cwd (git runs drivers at the top), else in the repo."""
    from vault.paths import find_project
    from vault.project import Project

    try:
        project = Project.open(find_project(cwd), sst_home)
        if project.app == app:
            return project
    except ConfigError:
        pass
    proc = run_git(cwd, "ls-files", "-z", "--", f"*{CONFIG_NAME}", check=False)
    top = run_git(cwd, "rev-parse", "--show-toplevel", check=False).out.strip()
    for rel in proc.out.split("\0"):
        if rel and Path(rel).name == CONFIG_NAME:
            try:
                project = Project.open(Path(top or cwd) / Path(rel).parent, sst_home)
            except ConfigError:
                continue
            if project.app == app:
                return project
    raise ConfigError(f"no {CONFIG_NAME} for app {app!r} in this repository")


__all__ = [
    "append_block",
    "check_driver",
    "gitattributes_block",
    "gitignore_block",
    "register_diff_driver",
    "registered_driver",
    "setup_git",
    "textconv",
]
