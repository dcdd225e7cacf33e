"""A project: its config, its two layouts (SST home and repo) and its keys, loaded once."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from vault import config as config_mod
from vault import keys, safefs
from vault.config import Config
from vault.errors import ConfigError
from vault.paths import HomeLayout, RepoLayout, default_sst_home, find_project


@dataclass
class Project:
    root: Path
    config: Config
    home: HomeLayout
    repo: RepoLayout

    @classmethod
    def open(cls, project_dir: Path | None = None, sst_home: Path | None = None) -> Project:
        root = project_dir.resolve() if project_dir else find_project(Path.cwd())
        if project_dir and not (root / "sst-vault.toml").is_file():
            raise ConfigError(
                f"no sst-vault.toml in {root}", "run `sst-vault init` there, or fix --project"
            )
        config = config_mod.load(root / "sst-vault.toml")
        home = HomeLayout((sst_home or default_sst_home()).expanduser().absolute())
        return cls(root, config, home, RepoLayout(root, config.state_dir))

    @property
    def app(self) -> str:
        return self.config.app

    @functools.cached_property
    def keys(self) -> keys.VaultKeys:
        """Find the secret, unwrap the data key (age) and apply the key-id pin."""
        source = keys.find_source(self.config.vault_id)
        keys.ensure_backend(source, self.config.backend)
        if self.config.backend == "age":
            data_key = keys.unwrap_data_key(
                self.read_wrapped_key(), source.secrets, self.repo.data_key_file
            )
            sealing = keys.data_file_key(data_key)
            opening = {sealing.key_id: sealing}
        else:
            file_keys = [keys.fernet_file_key(s) for s in source.secrets]
            sealing = file_keys[0]
            opening = {fk.key_id: fk for fk in reversed(file_keys)}
        keys.check_pin(sealing.key_id, keys.pinned_key_id(), f"${keys.ENV_KEY_ID}")
        return keys.VaultKeys(sealing, opening, source.origin)

    def read_wrapped_key(self) -> bytes:
        data = safefs.read_bytes(self.root, self.repo.data_key_parts)
        if data is None:
            raise ConfigError(
                f"{self.repo.data_key_file} is missing",
                "restore it from git, or re-run `sst-vault init` in a new vault",
            )
        return data
