"""`sst-vault.toml`: the vault's settings, kept next to `sst.config.ts` and committed."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from vault.errors import ConfigError
from vault.keys import BACKENDS
from vault.paths import CONFIG_NAME, DEFAULT_STATE_DIR, check_app, check_state_dir

DEFAULT_LOCK_PREFIX = "refs/sst-vault/locks"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass
class Config:
    """`sst-vault.toml`: settings only; nothing here decides who can read the vault."""

    app: str
    backend: str = "age"
    state_dir: str = DEFAULT_STATE_DIR
    vault_id: str = field(default_factory=lambda: os.urandom(8).hex())
    # `[recipients]` of a vault made by sst-vault 0.1: read only by `key upgrade`, which moves
    # them into the signed key record. Nothing here decides who can read the vault.
    legacy_recipients: dict[str, str] = field(default_factory=dict)
    lock_prefix: str = DEFAULT_LOCK_PREFIX
    remote: str = "origin"
    chunking: bool = True  # format v2: content-defined chunks (false: whole-file random sealing)

    def validate(self, where: str = CONFIG_NAME) -> Config:
        check_app(self.app)
        check_state_dir(self.state_dir)
        if self.backend not in BACKENDS:
            raise ConfigError(f"{where}: unknown backend {self.backend!r}", "use age or fernet")
        if not re.fullmatch(r"[0-9a-f]{16}", self.vault_id):
            raise ConfigError(f"{where}: vault_id must be 16 hex digits")
        if not self.lock_prefix.startswith("refs/") or self.lock_prefix.startswith("refs/heads"):
            raise ConfigError(
                f"{where}: lock_prefix {self.lock_prefix!r} must be a ref outside refs/heads",
                f"the default is {DEFAULT_LOCK_PREFIX}",
            )
        return self


def check_recipient_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid recipient name {name!r}", "use letters, digits and . _ @ - (e.g. alice, ci)"
        )
    return name


def load(path: Path) -> Config:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found", "run `sst-vault init` first") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc})", "fix or re-create it") from None
    known = {"app", "backend", "state_dir", "vault_id", "recipients", "lock_prefix", "remote"}
    known.add("chunking")
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting {unknown[0]!r}", f"known: {', '.join(sorted(known))}"
        )
    if "app" not in data or "vault_id" not in data:
        raise ConfigError(f"{path} lacks app or vault_id", "re-run `sst-vault init`")
    recipients = data.get("recipients", {})
    if not isinstance(recipients, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in recipients.items()
    ):
        raise ConfigError(f"{path}: [recipients] must map names to public keys")
    for key in ("app", "backend", "state_dir", "vault_id", "lock_prefix", "remote"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{path}: {key} must be a string")
    if not isinstance(data.get("chunking", True), bool):
        raise ConfigError(f"{path}: chunking must be true or false")
    config = Config(
        app=data["app"],
        backend=data.get("backend", "age"),
        state_dir=data.get("state_dir", DEFAULT_STATE_DIR),
        vault_id=data["vault_id"],
        legacy_recipients=dict(recipients),
        lock_prefix=data.get("lock_prefix", DEFAULT_LOCK_PREFIX),
        remote=data.get("remote", "origin"),
        chunking=data.get("chunking", True),
    )
    return config.validate(str(path))


def dumps(config: Config) -> str:
    """TOML for our handful of string settings; values are validated, so quoting is simple."""
    lines = [
        "# sst-vault: SST state encrypted in this repository. Commit this file.",
        f"app = {_quote(config.app)}",
        f"backend = {_quote(config.backend)}",
        f"state_dir = {_quote(config.state_dir)}",
        "# Names this vault's entry in the OS keyring; not a secret.",
        f"vault_id = {_quote(config.vault_id)}",
    ]
    if config.lock_prefix != DEFAULT_LOCK_PREFIX:
        lines.append(f"lock_prefix = {_quote(config.lock_prefix)}")
    if config.remote != "origin":
        lines.append(f"remote = {_quote(config.remote)}")
    if not config.chunking:
        lines.append("chunking = false")
    # No [recipients]: who can open the vault is in the signed key record (key-record.jsonl).
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def app_from_sst_config(project: Path) -> str | None:
    """The app name from `sst.config.ts` (`app() { return { name: "…" } }`), if found."""
    for name in ("sst.config.ts", "sst.config.mts", "sst.config.js"):
        path = project / name
        if path.is_file():
            text = path.read_text(errors="replace")
            match = re.search(r"\bname\s*:\s*[\"'`]([A-Za-z0-9_-]+)[\"'`]", text)
            if match:
                return match.group(1)
    return None


def home_is_local(project: Path) -> bool | None:
    path = project / "sst.config.ts"
    if not path.is_file():
        return None
    return (
        re.search(r"\bhome\s*:\s*[\"'`]local[\"'`]", path.read_text(errors="replace")) is not None
    )
