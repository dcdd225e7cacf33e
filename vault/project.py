"""A project: its config, its two layouts (SST home and repo) and its keys, loaded once."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from vault import config as config_mod
from vault import keys, safefs, trust
from vault.config import Config
from vault.errors import ConfigError, KeyPinError, TrustError
from vault.paths import HomeLayout, RepoLayout, default_sst_home, find_project


@dataclass
class Project:
    """One vault: its folder, settings, SST home and repository layout; keys and trust are
    read once, on first use."""

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
    def key_source(self) -> keys.KeySource:
        """The secret(s) found for this vault, read once."""
        return keys.find_source(self.config.vault_id)

    def unlock(self, source: keys.KeySource | None = None) -> keys.VaultKeys:
        """The vault's keys from `source` (default: `key_source`), every trust check applied.

        age: the key record verified, the pins, this machine's memory and the record's git
        history checked, and the data key unwrapped and matched to the record's newest entry
        (`vault.trust`); the newest entry is then remembered. fernet: with a pin, only the
        pinned key opens files; older keys listed after the first serve history only.
        """
        source = source or self.key_source
        keys.ensure_backend(source, self.config.backend)
        if self.config.backend == "age":
            sealing = (
                self.trusted if source is self.key_source else self.verify_record(source)
            ).sealing
            return keys.VaultKeys(sealing, {sealing.key_id: sealing}, source.origin)
        file_keys = [keys.fernet_file_key(s) for s in source.secrets]
        pinned = trust.env_pin(trust.ENV_PIN) or trust.env_pin(keys.ENV_KEY_ID)
        if pinned:
            chosen = [fk for fk in file_keys if fk.key_id == pinned]
            if not chosen:
                raise KeyPinError(
                    f"none of the Fernet keys given is the pinned {pinned}",
                    "give the vault's newest Fernet key first in SST_VAULT_KEY",
                )
            return keys.VaultKeys(chosen[0], {pinned: chosen[0]}, source.origin)
        return keys.VaultKeys(
            file_keys[0], {fk.key_id: fk for fk in reversed(file_keys)}, source.origin
        )

    @functools.cached_property
    def keys(self) -> keys.VaultKeys:
        """The verified keys: the newest data key seals, and only it opens for prepare."""
        return self.unlock()

    @functools.cached_property
    def trusted(self) -> trust.Trusted:
        """age: the verified key record and the newest data key, from `key_source`."""
        return self.verify_record()

    def verify_record(
        self,
        source: keys.KeySource | None = None,
        *,
        accept_identity: bool = False,
        remember: bool = True,
    ) -> trust.Trusted:
        """Run the trust checks of `vault.trust` in order; remember the newest entry.

        `accept_identity` is `key trust`: a vault identity other than the remembered one is
        accepted (after the user reviewed it); a record that went back or forked never is.
        """
        from vault.threads import Call

        source = source or self.key_source
        # The record's history comes from two git children: they run while this thread loads
        # and verifies the record (the checks below keep their order; only the waiting
        # overlaps). They start once a key was found (no key: no git at all), and a failure
        # here waits for them: `cli.main.console` ends the process at once, and no git child
        # may outlive the command.
        history = Call(lambda: (self._record_history(), self.places()), "sst-vault-history")
        where = self.record_label
        try:
            record = trust.load_record(self.root, self.repo.record_parts, self.app)
        except BaseException:
            history.wait()
            raise
        versions, places = history.result()
        memory = trust.recall(self.home, self.app)
        if record is None:
            self._refuse_downgrade(versions, memory)
            raise ConfigError(
                f"this vault has no signed key record ({where}): it was made by sst-vault 0.1",
                "a member runs `sst-vault key upgrade`, commits and pushes; then CI sets"
                " SST_VAULT_PIN to what it prints",
            )
        pinned = trust.check_pins(record, lambda: trust.last_change(self.root, where))
        if memory is not None and accept_identity and memory.identity != record.identity:
            memory = None
        replaced = memory is not None and memory.identity != record.identity
        trust.check_memory(
            memory, record, where, trust.last_change(self.root, where) if replaced else None
        )
        if memory is None and not (accept_identity or pinned):
            trust.check_place(self.home, self.app, places)
        accepted = accept_identity or pinned or (memory is not None)
        trust.check_history(record, versions, where, identity_accepted=accepted)
        data_key = keys.unwrap_data_key(
            self.read_wrapped_key(), source.secrets, self.repo.data_key_file
        )
        trust.check_data_key(record, data_key, self.repo.data_key_file)
        trust.check_exact_pin(record.newest.key_id)
        new_place = not set(places) <= set(memory.places) if memory is not None else True
        if remember and (memory is None or memory.seq != record.newest.seq or new_place):
            trust.remember(self.home, self.app, record, places=places)
        return trust.Trusted(record, data_key, versions)

    def refuse_downgrade(self) -> None:
        """With no key record: refuse if this vault had one (history, memory or a pin says so)."""
        self._refuse_downgrade(self._record_history(), trust.recall(self.home, self.app))

    def _refuse_downgrade(
        self, versions: list[tuple[str, bytes | None]], memory: trust.Memory | None
    ) -> None:
        where = self.record_label
        trust.check_history(None, versions, where)
        if memory is not None or trust.env_pin(trust.ENV_PIN):
            raise TrustError(
                where,
                "the signed key record is missing, but this vault had one",
                f"restore it from git (`git log -- {where}`)",
            )

    @property
    def record_label(self) -> str:
        return "/".join(self.repo.record_parts)

    def _record_history(self) -> list[tuple[str, bytes | None]]:
        from vault.errors import GitError
        from vault.gitstore import run_git

        try:
            return trust.history_versions(self.root)
        except GitError:
            # Not a git work tree, or no commit yet: nothing to compare with. Any other
            # failure must not pass for an empty history (that turns the check off).
            head = run_git(self.root, "rev-parse", "--verify", "-q", "HEAD", check=False)
            if head.code != 0:
                return []
            raise

    def places(self) -> tuple[str, ...]:
        """Where this clone keeps the vault (`trust.place_of`): every remote's URL from the
        clone's own git config, which no push can change, with sst-vault.toml's folder. This
        machine's memory of the vault lists them (`trust.check_place`)."""
        from vault.gitstore import run_git

        found = run_git(self.root, "config", "--get-regexp", r"^remote\..*\.url$", check=False)
        if found.code != 0:
            return ()
        top = next((p for p in (self.root, *self.root.parents) if (p / ".git").exists()), None)
        folder = self.root.relative_to(top).as_posix() if top else "."
        urls = (line.partition(" ")[2].strip() for line in found.out.splitlines())
        return tuple(sorted({trust.place_of(url, folder) for url in urls if url}))

    def review_key(self, key_id: str) -> keys.FileKey | None:
        """A key of the verified chain (age) or one of the keys given (fernet), by key id.

        Only for review (diff, log, the diff driver) and for comparing this SST home with
        its sync record: a file in the repo must open under the newest key alone, or a removed
        member could commit files sealed under a data key they still know.
        """
        found = self.keys.for_id(key_id)
        if found is not None:
            return found
        if self.config.backend == "age":
            return self.trusted.history_keys().get(key_id)
        given = (keys.fernet_file_key(s) for s in self.key_source.secrets)
        return next((fk for fk in given if fk.key_id == key_id), None)

    def read_wrapped_key(self) -> bytes:
        data = safefs.read_bytes(self.root, self.repo.data_key_parts)
        if data is None:
            raise ConfigError(
                f"{self.repo.data_key_file} is missing",
                "restore it from git, or re-run `sst-vault init` in a new vault",
            )
        return data
