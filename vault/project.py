"""A project: its config, its two layouts (SST home and repo) and its keys, loaded once."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from vault import config as config_mod
from vault import keys, pins, safefs
from vault.config import Config
from vault.errors import ConfigError
from vault.paths import HomeLayout, RepoLayout, default_sst_home, find_project

PAST_KEYS_SEARCHED = 50  # rotations are rare; an older sync record just counts as changed


@dataclass
class Project:
    root: Path
    config: Config
    home: HomeLayout
    repo: RepoLayout
    key_from_keyring: bool = field(default=False, init=False)

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
    def key_source(self) -> keys.KeySource:
        """The secret(s) found for this vault, read once (reading pops `SST_VAULT_KEY`)."""
        source = keys.find_source(self.config.vault_id)
        self.key_from_keyring = pins.is_keyring_source(source)
        return source

    def unlock(self, source: keys.KeySource | None = None) -> keys.VaultKeys:
        """The vault's keys from `source` (default: `key_source`), with no pin applied.

        Only `keys` (which applies the pins) should feed sealing and opening; this is for
        commands that inspect a key before trusting it (`key import`, `key trust`).
        """
        source = source or self.key_source
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
        return keys.VaultKeys(sealing, opening, source.origin)

    @functools.cached_property
    def keys(self) -> keys.VaultKeys:
        """Find the secret, unwrap the data key (age) and apply the key-id pins.

        `SST_VAULT_KEY_ID` pins it wherever the key comes from; a key from the OS keyring
        also pins the data key in the keyring on first unlock (`vault.pins`).
        """
        unlocked = self.unlock()
        keys.check_pin(unlocked.sealing.key_id, keys.pinned_key_id(), f"${keys.ENV_KEY_ID}")
        if self.config.backend == "age" and self.key_from_keyring:
            pins.check_or_pin(self.config.vault_id, unlocked.sealing.key_id)
        return unlocked

    def past_file_key(self, key_id: str) -> keys.FileKey | None:
        """A data key this vault used before a rotation, found in git history by its key id.

        Only for comparing this SST home with its sync record (written under the key of its
        day): a file in the repo must open under the current key alone, or a removed member
        could commit files sealed under a data key they still know.
        """
        if self.config.backend != "age":
            return None
        cache = self.__dict__.setdefault("_past_keys", {})
        if key_id not in cache:
            cache[key_id] = self._find_past_key(key_id)
        return cache[key_id]

    def _find_past_key(self, key_id: str) -> keys.FileKey | None:
        import git

        from vault.errors import VaultError
        from vault.gitstore import GitStore

        try:
            store = GitStore(self.root)
            rel = store.relative(self.repo.data_key_file)
            commits = list(store.repo.iter_commits(paths=rel, max_count=PAST_KEYS_SEARCHED))
        except (VaultError, ValueError, git.GitCommandError):
            return None
        for commit in commits:
            try:
                wrapped = (commit.tree / rel).data_stream.read()
                found = keys.data_file_key(
                    keys.unwrap_data_key(wrapped, self.key_source.secrets, Path(rel))
                )
            except (KeyError, VaultError):
                continue  # deleted in that commit, or not wrapped to this key
            if found.key_id == key_id:
                return found
        return None

    def read_wrapped_key(self) -> bytes:
        data = safefs.read_bytes(self.root, self.repo.data_key_parts)
        if data is None:
            raise ConfigError(
                f"{self.repo.data_key_file} is missing",
                "restore it from git, or re-run `sst-vault init` in a new vault",
            )
        return data
