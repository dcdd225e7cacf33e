"""Team key lifecycle: who can open the vault (age recipients), and rotating its key.

age backend: `sst-vault.toml` names the recipients and `data-key.age` wraps the vault's one data
key to all of them. Adding a member re-wraps the same data key. Removing one replaces the data
key, since the removed member may have kept it: a new random data key is wrapped to the remaining
recipients and every stage's current vault files are re-sealed under it (serials go up by one).
Git history still holds the old files and the old `data-key.age`, which the removed key opens:
what was in them must be treated as known to that person, and the report names those secrets.

fernet backend: the Fernet key is the secret itself. `rotate` re-seals every file under the
newest key (the first in SST_VAULT_KEY); the older keys listed after it still open old revisions.

Every change here is one `change.Change`: new files are sealed and verified beside the old
ones, swapped in together (journaled; a failure part-way, or a failed git commit, puts the old
ones back), then committed as one commit of exactly those files, under the SST home's and the
repository's locks. Nothing is pushed here (`change.pushed` does that for --push).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field

from vault import config as config_mod
from vault import envelope, keyrecord, keys, safefs, trust
from vault.change import Change
from vault.envelope import FileKey, Header
from vault.errors import ConfigError, RefusedError, UsageError, WrongKeyError
from vault.paths import CONFIG_NAME, KINDS
from vault.project import Project
from vault.records import Records, writer_name

SPOOL_SIZE = 8 * 1024 * 1024  # plaintext above this goes to an unlinked file in the SST home


@dataclass
class Resealed:
    stage: str
    kind: str
    old_serial: int
    serial: int


@dataclass
class RotationReport:
    backend: str
    old_key_id: str
    key_id: str  # the new value of SST_VAULT_KEY_ID
    recipients: dict[str, str] = field(default_factory=dict)
    files: list[Resealed] = field(default_factory=list)
    removed: str | None = None
    commit: str | None = None
    identity: str | None = None  # `key upgrade`: the vault identity it signed (the pin)

    @property
    def stages(self) -> list[str]:
        return sorted({f.stage for f in self.files})

    @property
    def secret_stages(self) -> list[str]:
        return sorted({f.stage for f in self.files if f.kind == "secret"})


@dataclass
class RecipientChange:
    name: str
    public: str
    key_id: str
    commit: str | None


# --- recipients ---------------------------------------------------------------------------


def require_age(project: Project, command: str) -> None:
    if project.config.backend != "age":
        raise UsageError(
            f"`{command}` needs the age backend, and this vault uses fernet (one shared key,"
            " no recipients)",
            "share the Fernet key through a secret channel; `sst-vault rotate` moves to a new one",
        )


def list_recipients(project: Project) -> dict[str, str]:
    """The recipients of the verified key record's newest entry (never sst-vault.toml's)."""
    require_age(project, "recipients")
    return project.trusted.record.recipients


def add_recipient(project: Project, name: str, public: str) -> RecipientChange:
    """Wrap the vault's data key to one more age public key, and commit that."""
    require_age(project, "recipients add")
    config_mod.check_recipient_name(name)
    public = keys.canonical_recipient(public, name)  # ssh-ed25519 keys lose their comment
    trusted = project.trusted  # verified record, pinned and remembered: never a writer's edit
    current = trusted.record.recipients
    if name in current:
        raise UsageError(
            f"{name} is already a recipient ({current[name]})",
            f"pick another name, or `sst-vault recipients remove {name}` first",
        )
    for other, pub in current.items():
        if pub == public:
            raise UsageError(f"that public key is already the recipient {other}", "nothing to do")
    data_key = trusted.sealing
    recipients = {**current, name: public}
    record = keyrecord.append(
        trusted.record, data_key.secret, data_key.secret, data_key.key_id, recipients, writer_name()
    )
    with Change(project) as change:
        change.put(
            project.repo.data_key_parts, keys.wrap_data_key(data_key.secret, recipients.values())
        )
        change.put(project.repo.record_parts, record.dumps())
        commit = change.commit(f"sst-vault: add recipient {name}")
        # Only once git has it: a failed commit puts the old record back, and this machine
        # must not remember an entry the work tree no longer holds.
        trust.remember(project.home, project.app, record)
    return RecipientChange(name, public, data_key.key_id, commit)


def remove_recipient(project: Project, name: str) -> RotationReport:
    """Drop a recipient and rotate the data key, so their key opens nothing committed later."""
    require_age(project, "recipients remove")
    current = project.trusted.record.recipients
    if name not in current:
        known = ", ".join(current) or "none"
        raise UsageError(f"{name} is not a recipient of this vault", f"recipients: {known}")
    remaining = {n: p for n, p in current.items() if n != name}
    if not remaining:
        raise RefusedError(
            f"{name} is the vault's only recipient: nobody could open it afterwards",
            "add the new key first with `sst-vault recipients add`",
        )
    return rotate(project, recipients=remaining, removed=name)


# --- rotation -----------------------------------------------------------------------------


def rotate(
    project: Project, *, recipients: dict[str, str] | None = None, removed: str | None = None
) -> RotationReport:
    """age: new data key for `recipients` (default: the current ones), every file re-sealed,
    and a key record entry signed by the old and the new data key.

    fernet: every file re-sealed under the newest key given, when it is not already.
    """
    current = project.keys  # verified: a data key swapped in the repo is never rotated in
    extra: list[tuple[tuple[str, ...], bytes]] = []
    record = None
    if project.config.backend == "age":
        trusted = project.trusted
        recipients = dict(trusted.record.recipients if recipients is None else recipients)
        _refuse_lockout(project, recipients, removed)
        new_key = keys.data_file_key(keys.new_data_key())
        writer = writer_name()
        record = keyrecord.append(
            trusted.record, trusted.data_key, new_key.secret, new_key.key_id, recipients, writer
        )
        extra = [
            (project.repo.data_key_parts, keys.wrap_data_key(new_key.secret, recipients.values())),
            (project.repo.record_parts, record.dumps()),
        ]
    else:
        new_key = current.sealing
    report = RotationReport(
        project.config.backend,
        current.sealing.key_id,
        new_key.key_id,
        recipients or {},
        removed=removed,
    )
    _reseal_all(project, current, new_key, report, extra)
    if record is not None:
        trust.remember(project.home, project.app, record)
    return report


def _reseal_all(
    project: Project,
    current: keys.VaultKeys,
    new_key: FileKey,
    report: RotationReport,
    extra: list[tuple[tuple[str, ...], bytes]],
    message: str | None = None,
) -> None:
    """Re-seal every stage's files under `new_key` and replace them together with `extra`
    (repo-relative parts and bytes: the wrapped key, the record, the config), then commit."""
    resealed: list[tuple[Resealed, Header, Header]] = []
    with Change(project) as change:
        for stage in sorted(project.repo.stages()):
            for kind in KINDS:
                done = _reseal(project, current, new_key, stage, kind, change)
                if done:
                    old, new = done
                    resealed.append((Resealed(stage, kind, old.serial, new.serial), old, new))
        for parts, data in extra:
            change.put(parts, data)
        report.files = [r for r, _, _ in resealed]
        # fernet, every file already under the newest key: nothing changed, no commit.
        report.commit = change.commit(message or _rotation_message(report))
        if not resealed:
            return
        # This home was in sync with what was just re-sealed: it still is, at the new serial.
        records = Records(project)
        for item, old, new in resealed:
            synced = records.get(item.stage, item.kind)
            if synced and (synced.serial, synced.fingerprint, synced.key_id) == (
                old.serial,
                old.fingerprint,
                old.key_id,
            ):
                records.set(item.stage, item.kind, new, synced.action)
        records.save()


def upgrade(project: Project, recipients: dict[str, str] | None = None) -> RotationReport:
    """Give a vault made by sst-vault 0.1 its signed key record, under a new data key.

    0.1 kept the recipients in `sst-vault.toml`, where anyone who could push could add
    themselves, and trusted whatever `data-key.age` held. So the upgrade does not carry the old
    data key over: it unwraps it one last time (after the 0.1 pins, `SST_VAULT_KEY_ID`),
    starts a new chain with a fresh data key wrapped to `recipients` (default: the toml's, which
    the CLI shows for review first), re-seals every file, and drops `[recipients]` from the toml.
    """
    check_upgradable(project)
    source = project.key_source
    keys.ensure_backend(source, "age")
    old_key = keys.data_file_key(
        keys.unwrap_data_key(project.read_wrapped_key(), source.secrets, project.repo.data_key_file)
    )
    trust.check_exact_pin(old_key.key_id)
    recipients = dict(project.config.legacy_recipients if recipients is None else recipients)
    if not recipients:
        raise ConfigError(
            "sst-vault.toml lists no recipients to carry over",
            "pass them: `sst-vault key upgrade --recipient NAME=age1…` (yours included)",
        )
    recipients = {
        name: keys.canonical_recipient(public, config_mod.check_recipient_name(name))
        for name, public in recipients.items()
    }
    _refuse_lockout(project, recipients, None)
    new_key = keys.data_file_key(keys.new_data_key())
    record = keyrecord.first_entry(
        project.app, new_key.secret, new_key.key_id, recipients, writer_name()
    )
    legacy = keys.VaultKeys(old_key, {old_key.key_id: old_key}, source.origin)
    config = dataclasses.replace(project.config, legacy_recipients={})
    extra = [
        (project.repo.data_key_parts, keys.wrap_data_key(new_key.secret, recipients.values())),
        (project.repo.record_parts, record.dumps()),
        ((CONFIG_NAME,), config_mod.dumps(config).encode()),
    ]
    attributes = _attributes_with_record(project)
    if attributes is not None:
        extra.append(((".gitattributes",), attributes))
    report = RotationReport(
        "age", old_key.key_id, new_key.key_id, recipients, identity=record.identity
    )
    message = f"sst-vault: signed key record {record.identity}, new data key {new_key.key_id}"
    _reseal_all(project, legacy, new_key, report, extra, message)
    project.config = config
    trust.remember(project.home, project.app, record)
    return report


def check_upgradable(project: Project) -> None:
    """Refuse `key upgrade` of a vault that has a record, or had one (a writer deleted it)."""
    require_age(project, "key upgrade")
    if project.repo.record_file.exists():
        raise RefusedError(
            f"{project.record_label} exists: this vault is upgraded already", "nothing to do"
        )
    project.refuse_downgrade()


def _attributes_with_record(project: Project) -> bytes | None:
    """0.1's `.gitattributes` block with the key record's line added (None: nothing to add)."""
    path = project.root / ".gitattributes"
    text = path.read_text() if path.is_file() else ""
    state_dir = project.config.state_dir
    data_line = f"{state_dir}/data-key.age -text -merge\n"
    if f"{state_dir}/key-record.jsonl" in text or data_line not in text:
        return None
    return text.replace(
        data_line, data_line + f"{state_dir}/key-record.jsonl -text -merge\n", 1
    ).encode()


def _refuse_lockout(project: Project, recipients: dict[str, str], removed: str | None) -> None:
    mine = {s.public() for s in project.key_source.secrets if s.backend == "age"}
    if mine & set(recipients.values()):
        return
    if removed:
        raise RefusedError(
            f"removing {removed} would leave none of your keys able to open the vault",
            "let another member remove it, or add your key first",
        )
    raise RefusedError(
        "none of your keys is a recipient in the key record, so rotating would lock you out",
        "add your key with `sst-vault recipients add`, then rotate",
    )


def _reseal(
    project: Project,
    current: keys.VaultKeys,
    new_key: FileKey,
    stage: str,
    kind: str,
    change: Change,
) -> tuple[Header, Header] | None:
    parts = project.repo.vault_parts(kind, stage)
    path = project.repo.vault_file(kind, stage)
    handle = safefs.open_read(project.root, parts)
    if handle is None:
        return None
    with handle:
        old, _ = envelope.read_header(handle, path)
        envelope.check_header(old, path, app=project.app, stage=stage, kind=kind)
        if old.key_id == new_key.key_id:
            return None  # fernet: already under the newest key
        old_key = current.for_id(old.key_id)
        if old_key is None:
            raise WrongKeyError(
                path,
                f"sealed under key id {old.key_id}, which none of your keys has",
                "list the older key after the new one in SST_VAULT_KEY, then retry"
                if project.config.backend == "fernet"
                else "pull the latest commit, or restore the file from git",
            )
        handle.seek(0)
        meta = {"app": project.app, "stage": stage, "kind": kind}
        # The plaintext never enters the repo: small files stay in memory, large ones go to an
        # unlinked temporary file beside the SST home's own (plaintext) state.
        with tempfile.SpooledTemporaryFile(SPOOL_SIZE, dir=project.home.bookkeeping) as plain:
            envelope.open_(handle, plain, old_key, path, **meta)
            new = change.seal(stage, kind, plain, key=new_key, serial=old.serial + 1)
    return old, new


def _rotation_message(report: RotationReport) -> str:
    if report.backend == "fernet":
        title = f"sst-vault: re-seal every stage under Fernet key {report.key_id}"
    elif report.removed:
        title = f"sst-vault: remove recipient {report.removed}, new data key {report.key_id}"
    else:
        title = f"sst-vault: rotate data key {report.old_key_id} -> {report.key_id}"
    lines = [title, ""]
    by_stage: dict[str, list[str]] = {}
    for item in report.files:
        by_stage.setdefault(item.stage, []).append(item.kind)
    lines += [f"re-sealed {stage}: {', '.join(kinds)}" for stage, kinds in by_stage.items()]
    if report.removed:
        lines += ["", f"Commits before this one still open for {report.removed}'s key."]
    return "\n".join(lines).rstrip() + "\n"


__all__ = [
    "RecipientChange",
    "Resealed",
    "RotationReport",
    "add_recipient",
    "list_recipients",
    "remove_recipient",
    "require_age",
    "rotate",
]
