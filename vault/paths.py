"""Every path sst-vault touches, in one screen.

The SST home (where SST keeps local state) follows Go's `os.UserConfigDir()` + "/sst", because
that is what the SST binary uses. The repo side mirrors the published plaintext recipe
(`infra/state/<kind>/<stage>.json`) with a `.vault` suffix.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vault.errors import ConfigError, UsageError

CONFIG_NAME = "sst-vault.toml"
DEFAULT_STATE_DIR = "infra/state"
DATA_KEY_NAME = "data-key.age"  # the age backend's wrapped data key, inside state_dir
RECORD_NAME = "key-record.jsonl"  # the signed key record (vault.keyrecord), inside state_dir
VAULT_SUFFIX = ".json.vault"

# The kinds of SST state we sync, in the order SST needs them (passphrase opens the rest).
KINDS: tuple[str, ...] = ("passphrase", "app", "secret")
# What SST keeps per machine and we never touch: lock, update/, snapshot/, eventlog/.
FALLBACK_STAGE = "_fallback"

# SST refuses a stage matching [^a-zA-Z0-9-] (project.InvalidStageRegex) and, in practice, one
# longer than 250 characters (<stage>.json must fit a 255-byte file name). Apps must also start
# with a letter. Nothing accepted here can walk a path: no "/", "\\", ".", NUL.
_STAGE_RE = re.compile(r"^[A-Za-z0-9-]{1,250}$")
_APP_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")

# Our own bookkeeping inside the SST home: sync records, backups, the local file lock, the
# journal of an unfinished multi-file change (see safefs.Transaction).
HOME_BOOKKEEPING = ".sst-vault"
HOME_JOURNAL_PARTS = (HOME_BOOKKEEPING, "journal")
# The same journal for vault files, inside the git directory (never in the work tree).
REPO_JOURNAL_NAME = "sst-vault-journal"


def check_stage(stage: str) -> str:
    """Return `stage` if SST could have produced it, else raise UsageError."""
    if stage == FALLBACK_STAGE or _STAGE_RE.fullmatch(stage):
        return stage
    raise UsageError(
        f"invalid stage name {stage!r}",
        "SST stages use only letters, digits and '-' (and _fallback for fallback secrets)",
    )


def check_app(app: str) -> str:
    if _APP_RE.fullmatch(app):
        return app
    raise ConfigError(
        f"invalid app name {app!r}",
        "use the name from sst.config.ts (a letter, then letters, digits, '-')",
    )


def default_sst_home(platform: str | None = None, environ: dict[str, str] | None = None) -> Path:
    """Go's os.UserConfigDir() + "/sst", which is where the SST binary keeps `home: "local"`.

    SST joins with Go's filepath.Join, which also cleans the path lexically (`a/../b` is `b`
    even when `a` is a symlink), so the same cleaning here names the folder SST really uses.
    """
    return Path(os.path.normpath(_user_config_dir(platform, environ) / "sst"))


def _user_config_dir(platform: str | None, environ: dict[str, str] | None) -> Path:
    platform = platform or sys.platform
    env = os.environ if environ is None else environ
    if platform.startswith("win"):
        appdata = env.get("AppData") or env.get("APPDATA")
        if not appdata:
            raise ConfigError("%AppData% is not set", "pass --sst-home DIR")
        return Path(appdata)
    home = env.get("HOME")
    if platform == "darwin":
        if not home:
            raise ConfigError("$HOME is not set", "pass --sst-home DIR")
        return Path(home) / "Library" / "Application Support"
    # Go: $XDG_CONFIG_HOME if set, else $HOME/.config. A relative $XDG_CONFIG_HOME is an
    # error there (and SST panics), so guessing ~/.config would sync a folder SST never reads.
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg:
        if not os.path.isabs(xdg):
            raise ConfigError(
                f"$XDG_CONFIG_HOME ({xdg}) is a relative path, which SST refuses too",
                "make it absolute, or pass --sst-home DIR",
            )
        return Path(xdg)
    if not home:
        raise ConfigError("neither $XDG_CONFIG_HOME nor $HOME is set", "pass --sst-home DIR")
    return Path(home) / ".config"


@dataclass(frozen=True)
class HomeLayout:
    """Where SST keeps one app's local state: <home>/state/<kind>/<app>/<stage>.json."""

    root: Path

    def state_parts(self, kind: str, app: str, stage: str) -> tuple[str, ...]:
        """Path components below `root`; walked one by one so no symlink is followed."""
        return ("state", kind, app, f"{stage}.json")

    def state_file(self, kind: str, app: str, stage: str) -> Path:
        return self.root.joinpath(*self.state_parts(kind, app, stage))

    def stages(self, app: str) -> set[str]:
        """Stages that have any synced kind in this home."""
        found: set[str] = set()
        for kind in KINDS:
            folder = self.root / "state" / kind / app
            if folder.is_dir() and not folder.is_symlink():
                found.update(
                    p.name[: -len(".json")]
                    for p in folder.iterdir()
                    if p.name.endswith(".json") and _is_stage(p.name[: -len(".json")])
                )
        return found

    @property
    def bookkeeping(self) -> Path:
        return self.root / HOME_BOOKKEEPING

    @property
    def temp_folders(self) -> list[tuple[tuple[str, ...], int]]:
        """Where sst-vault's temporary files can be (parts, levels below): state/<kind>/<app>/
        for every app, and the bookkeeping folder (records, backups, journal)."""
        return [(("state", kind), 1) for kind in KINDS] + [((HOME_BOOKKEEPING,), 4)]


@dataclass(frozen=True)
class RepoLayout:
    """Where the vault lives in the project: <project>/<state_dir>/<kind>/<stage>.json.vault."""

    project: Path
    state_dir: str = DEFAULT_STATE_DIR

    @property
    def state_root(self) -> Path:
        return self.project / self.state_dir

    @property
    def config_file(self) -> Path:
        return self.project / CONFIG_NAME

    @property
    def state_parts(self) -> tuple[str, ...]:
        return PurePosixPath(self.state_dir).parts

    @property
    def data_key_parts(self) -> tuple[str, ...]:
        return (*self.state_parts, DATA_KEY_NAME)

    @property
    def data_key_file(self) -> Path:
        return self.project.joinpath(*self.data_key_parts)

    @property
    def record_parts(self) -> tuple[str, ...]:
        return (*self.state_parts, RECORD_NAME)

    @property
    def record_file(self) -> Path:
        return self.project.joinpath(*self.record_parts)

    @property
    def temp_folders(self) -> list[tuple[tuple[str, ...], int]]:
        """Where sst-vault's temporary files can be: the state folder (vault files, data key)
        and the project folder itself (sst-vault.toml, .gitattributes, .gitignore)."""
        return [(self.state_parts, 1), ((), 0)]

    def vault_parts(self, kind: str, stage: str) -> tuple[str, ...]:
        return (*self.state_parts, kind, f"{stage}{VAULT_SUFFIX}")

    def vault_file(self, kind: str, stage: str) -> Path:
        return self.project.joinpath(*self.vault_parts(kind, stage))

    def stages(self) -> set[str]:
        found: set[str] = set()
        for kind in KINDS:
            folder = self.state_root / kind
            if folder.is_dir() and not folder.is_symlink():
                found.update(
                    p.name[: -len(VAULT_SUFFIX)]
                    for p in folder.iterdir()
                    if p.name.endswith(VAULT_SUFFIX) and _is_stage(p.name[: -len(VAULT_SUFFIX)])
                )
        return found


def _is_stage(name: str) -> bool:
    return name == FALLBACK_STAGE or bool(_STAGE_RE.fullmatch(name))


def check_state_dir(state_dir: str) -> str:
    """A relative, normalised POSIX path inside the project; anything else is refused."""
    if not state_dir or "\\" in state_dir or "\0" in state_dir:
        raise ConfigError(
            f"state_dir {state_dir!r} is not a relative POSIX path inside the project",
            "use a relative path such as infra/state",
        )
    if '"' in state_dir or any(ord(c) < 0x20 or ord(c) == 0x7F for c in state_dir):
        # git quotes such paths in what it prints even with core.quotePath=false.
        raise ConfigError(
            f"state_dir {state_dir!r} has a double quote or a control character",
            "use a plain path such as infra/state",
        )
    pure = PurePosixPath(state_dir)
    if pure.is_absolute() or any(part in ("..", ".") for part in pure.parts) or not pure.parts:
        raise ConfigError(
            f"state_dir {state_dir!r} points outside the project",
            "use a relative path such as infra/state",
        )
    if any(part.lower() == ".git" for part in pure.parts):
        # git silently skips any path with a .git component: the vault would never be committed.
        raise ConfigError(f"state_dir {state_dir!r} is inside a .git folder", "use infra/state")
    return str(pure)


def find_project(start: Path) -> Path:
    """Search upward from `start` for sst-vault.toml, as git does for .git."""
    here = start.resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder
    raise ConfigError(
        f"no {CONFIG_NAME} in {here} or any parent",
        "run `sst-vault init` next to sst.config.ts, or pass --project DIR",
    )


def same_folder(a: Path, b: Path) -> bool:
    """Whether two spellings name one folder: through symlinks and `..` when both exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def home_from_sst_binary(timeout: float = 10.0) -> Path | None:
    """What an installed `sst` says its home is (`sst version --verbose`, line `config DIR`).

    A cross-check only: SST has no setting that moves its home, so the platform rule above is
    authoritative; a disagreement means HOME/XDG_CONFIG_HOME differ between the two processes.
    """
    import shutil
    import subprocess

    sst = shutil.which("sst")
    if sst is None:
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SST_VAULT_")}
    env.update(SST_SKIP_DEPENDENCY_CHECK="1", SST_TELEMETRY_DISABLED="1", DO_NOT_TRACK="1")
    try:
        out = subprocess.run(
            [sst, "version", "--verbose"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        name, _, value = line.partition(" ")
        if name == "config" and value.strip():
            return Path(value.strip())
    return None
