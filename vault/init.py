"""`init`: the vault's first files (config, wrapped data key, git attributes and ignores)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from vault import keyrecord, keys, oskeyring, safefs
from vault.config import Config, app_from_sst_config, check_recipient_name, dumps, home_is_local
from vault.errors import ConfigError, NoKeyError
from vault.gitsetup import append_block, gitattributes_block, gitignore_block, register_diff_driver
from vault.paths import CONFIG_NAME, DEFAULT_STATE_DIR, RepoLayout, check_app, check_state_dir


@dataclass
class InitReport:
    config: Config
    key_origin: str
    key_id: str
    pin: str  # the value of SST_VAULT_PIN: the vault identity (age), the key id (fernet)
    generated: bool
    public: str | None
    recipients: dict[str, str] = field(default_factory=dict)
    record: keyrecord.Record | None = None  # age: the signed key record it started
    owners: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def init(
    project: Path,
    *,
    app: str | None = None,
    backend: str | None = None,
    state_dir: str = DEFAULT_STATE_DIR,
    use_keyring: bool = True,
    recipients: dict[str, str] | None = None,
    name: str | None = None,
) -> InitReport:
    from vault.gitstore import GitStore

    project = project.resolve()
    GitStore(project)  # refuse early outside a git work tree
    if (project / CONFIG_NAME).exists():
        raise ConfigError(f"{project / CONFIG_NAME} already exists", "this project is initialised")
    configs = [
        n for n in ("sst.config.ts", "sst.config.mts", "sst.config.js") if (project / n).is_file()
    ]
    if not app and not configs:
        raise ConfigError(
            f"no sst.config.ts in {project}",
            "run `sst-vault init` in your SST app's folder, next to sst.config.ts "
            "(or pass --app NAME)",
        )
    app = app or app_from_sst_config(project)
    if not app:
        raise ConfigError(f"no app name found in {configs[0]}", "pass --app NAME")
    check_app(app)
    state_dir = check_state_dir(state_dir)
    warnings = []
    if home_is_local(project) is False:
        warnings.append(
            'sst.config.ts does not set home: "local"; sst-vault syncs local state only'
        )

    secret, origin, generated, from_variable = _initial_secret(backend, use_keyring)
    backend = backend or secret.backend
    if secret.backend != backend:
        raise ConfigError(f"{origin} holds a {secret.backend} key, not a {backend} key")
    config = Config(app=app, backend=backend, state_dir=state_dir)
    layout = RepoLayout(project, state_dir)
    public = None
    owners: list[str] = []
    named: dict[str, str] = {}
    if backend == "age":
        public = secret.public()
        # A key from the environment is CI's only when this runs in CI: a developer who
        # exported SST_VAULT_KEY (the README's shared-key path) is a person, not "ci".
        in_ci = from_variable and running_in_ci()
        owner = check_recipient_name(name or ("ci" if in_ci else _user()))
        named = {owner: public}
        owners = [owner]
        for extra_name, extra_pub in (recipients or {}).items():
            named[extra_name] = keys.canonical_recipient(
                extra_pub, check_recipient_name(extra_name)
            )
        data_key = keys.new_data_key()
        key_id = keys.data_file_key(data_key).key_id
        wrapped = keys.wrap_data_key(data_key, named.values())
        record = keyrecord.first_entry(app, data_key, key_id, named, _user())
        pin = record.identity
    else:
        key_id = keys.fernet_file_key(secret).key_id
        pin = key_id
    config.validate()
    if generated:
        oskeyring.put(config.vault_id, [secret.text])
        origin = "the OS keyring (new key)"
    if backend == "age":
        safefs.write_atomic(project, layout.data_key_parts, wrapped, 0o644)
        safefs.write_atomic(project, layout.record_parts, record.dumps(), 0o644)
    append_block(project / ".gitattributes", gitattributes_block(state_dir))
    append_block(project / ".gitignore", gitignore_block(state_dir))
    safefs.write_atomic(project, (CONFIG_NAME,), dumps(config).encode(), 0o644)
    register_diff_driver(project)  # the git diff driver for *.vault
    return InitReport(
        config,
        origin,
        key_id,
        pin,
        generated,
        public,
        recipients=named,
        record=record if backend == "age" else None,
        warnings=warnings,
        owners=owners,
    )


def _initial_secret(backend: str | None, use_keyring: bool) -> tuple[keys.Secret, str, bool, bool]:
    """The key from the environment if there is one; else a new key meant for the keyring.

    Returns the secret, where it came from (for messages), whether it is new, and whether it
    came from SST_VAULT_KEY."""
    if keys.taken(keys.ENV_KEY) is not None or keys.taken(keys.ENV_KEY_FILE):
        source = keys.find_source(None, use_keyring=False)
        return source.secrets[0], source.origin, False, source.place is keys.KeyPlace.VARIABLE
    if not use_keyring:
        raise NoKeyError(
            f"--no-keyring needs the key in ${keys.ENV_KEY} or ${keys.ENV_KEY_FILE}",
            f"export {keys.ENV_KEY}=$(sst-vault key generate)",
        )
    oskeyring.backend()  # fail now, naming the backend to install, before any file is written
    return keys.generate(backend or "age"), "the OS keyring", True, False


CI_VARIABLES = ("GITHUB_ACTIONS", "GITLAB_CI", "TF_BUILD", "BUILDKITE", "CIRCLECI", "JENKINS_URL")


def running_in_ci() -> bool:
    """CI=true (set by GitHub Actions, GitLab CI, CircleCI, Buildkite…) or a CI's own variable."""
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or any(os.environ.get(v) for v in CI_VARIABLES)


def _user() -> str:
    """The login name as a recipient name (`check_recipient_name`'s characters only)."""
    from vault.records import user_name

    return "".join(c for c in user_name("me") if c.isalnum() or c in "._-") or "me"
