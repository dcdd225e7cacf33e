"""Which data key a member accepts, and why a writer without one can never change it.

Every file in the repository and every commit in its history is attacker-controlled unless a
data key authenticated it. A member accepts the vault's keys in this order, and every step has
one named failure (TUF's trusted-set discipline: nothing unverified is handed on):

1. the key record (`vault.keyrecord`) parses and its chain verifies from entry 0;
2. pins: `SST_VAULT_PIN` names the vault's identity (the hash of entry 0: it survives
   rotations), `SST_VAULT_KEY_ID` the exact newest data key (the strictest setups). A pin
   variable that is set but empty is an error, never "no pin";
3. this machine's memory (`<sst-home>/.sst-vault/trust/<app>.json`): the identity it accepted
   and the newest entry it saw. Another identity is refused until `sst-vault key trust`; a
   record that went back or forked is refused outright (a removed member reverting it). The
   memory also lists the places the vault was seen at (this clone's remote URLs, which no push
   can change, with the folder of sst-vault.toml): an app this machine never saw, in a clone of
   a repository where it trusted another app (any folder: the writer chooses the folder too),
   is refused until `key trust` or a pin (a writer renaming the app in sst-vault.toml, which
   names the memory, must not make the machine forget it);
4. the record's git history: every version of it in the history this clone has that verifies
   under this identity must be a prefix of the current one (so a fresh clone also refuses a
   record that went back or forked along history); a record deleted after it existed is
   refused (no downgrade to an unsigned vault);
5. the member's secret unwraps `data-key.age`, and that data key must be the record's newest
   (same key id, same signing key): a data key swapped in by a writer never seals anything.

Only then is the newest entry remembered. Review commands (diff, log, the diff driver,
rollback) get older data keys from the chain itself (each rotation seals the previous data key
under the new one), never from files a writer could have put in history.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from vault import keyrecord, keys, safefs
from vault.envelope import FileKey
from vault.errors import ConfigError, KeyPinError, TrustError, WrongKeyError
from vault.keyrecord import Record
from vault.paths import RECORD_NAME

if TYPE_CHECKING:
    from vault.paths import HomeLayout

ENV_PIN = "SST_VAULT_PIN"
MEMORY_VERSION = 1


def env_pin(name: str) -> str | None:
    """A pin variable's value; set but empty (an undefined CI variable) is an error."""
    value = os.environ.get(name)
    if value is None:
        return None
    if not value.strip():
        raise ConfigError(
            f"${name} is set but empty",
            "set it to the value `sst-vault key pin` prints, or unset it"
            if name == ENV_PIN
            else "set it to the value `sst-vault key id` prints, or unset it",
        )
    return value.strip()


# --- this machine's memory -----------------------------------------------------------------


@dataclass
class Memory:
    """What this machine accepted last for one app: identity, newest entry seq and hash, and
    the places (`place_of`) it was accepted at."""

    identity: str
    seq: int
    hash: str
    time: str = ""
    places: tuple[str, ...] = ()


def _memory_parts(app: str) -> tuple[str, ...]:
    return (".sst-vault", "trust", f"{app}.json")


def recall(home: HomeLayout, app: str) -> Memory | None:
    raw = safefs.read_bytes(home.root, _memory_parts(app)) if home.root.is_dir() else None
    if not raw:
        return None
    try:
        data = json.loads(raw)
        if data.get("version") != MEMORY_VERSION:
            raise ValueError
        places = data.get("places", [])
        if not isinstance(places, list) or not all(isinstance(p, str) for p in places):
            raise ValueError
        memory = Memory(
            str(data["identity"]), int(data["seq"]), str(data["hash"]), places=tuple(places)
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(
            f"{home.root.joinpath(*_memory_parts(app))} is damaged",
            "delete it and run `sst-vault key trust` to accept the vault again after review",
        ) from None
    return memory


def remember(
    home: HomeLayout,
    app: str,
    record: Record,
    *,
    places: tuple[str, ...] = (),
    create: bool = False,
) -> None:
    """Remember the newest entry in the SST home, and `places` besides those already known for
    this identity; nothing where the home does not exist yet (`doctor` and `status` never
    create it; the first `prepare` does), unless `create` (`init`: who made the vault trusts
    it)."""
    if create:
        home.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not home.root.is_dir():
        return
    try:
        known = recall(home, app)
    except ConfigError:
        known = None  # a damaged memory is replaced, as before
    kept = known.places if known is not None and known.identity == record.identity else ()
    newest = record.newest
    body = {
        "version": MEMORY_VERSION,
        "identity": record.identity,
        "seq": newest.seq,
        "hash": newest.hash,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "places": sorted({*kept, *places}),
    }
    safefs.write_atomic(home.root, _memory_parts(app), json.dumps(body, indent=1).encode())


def memory_bytes(home: HomeLayout, app: str) -> bytes | None:
    """This machine's memory of `app` as stored, for `restore_memory`."""
    return safefs.read_bytes(home.root, _memory_parts(app)) if home.root.is_dir() else None


def restore_memory(home: HomeLayout, app: str, data: bytes | None) -> None:
    """Put back what `memory_bytes` read: for an entry this machine signed and remembered but
    never published (`change.pushed` dropped the commit that had it), so that the record the
    remote has is not taken for one that went back."""
    if data is None:
        forget(home, app)
    else:
        safefs.write_atomic(home.root, _memory_parts(app), data)


def check_place(home: HomeLayout, app: str, places: tuple[str, ...]) -> None:
    """With no memory of `app`: refuse if this machine trusted another app in a clone of the
    same repository (a remote URL of `places`), whatever folder of it that app's vault was in.

    The memory is named by the app that sst-vault.toml gives, which a writer can edit: renaming
    the app and putting in a key record and data key of his own must not make a machine that
    used the vault here take his for a vault it never saw (a shallow clone, or a branch with no
    history in common, has no record history to refuse it either). The folder of sst-vault.toml
    is the writer's to choose too (he moves the project, or adds an sst-vault.toml in a folder
    between the one a member works in and the remembered one): it never makes a place new. A
    second vault of the same repository is accepted the same way, once (`key trust`, a pin),
    as the record history of a full clone already asks.
    """
    folder = home.root.joinpath(".sst-vault", "trust")
    if not places or not folder.is_dir():
        return
    here = {_remote_of(place) for place in places}
    for path in sorted(folder.glob("*.json")):
        other = path.name.removesuffix(".json")
        if other == app:
            continue
        try:
            memory = recall(home, other)
        except ConfigError:
            continue  # damaged: says so when its own app is used
        shared = sorted(p for p in (memory.places if memory else ()) if _remote_of(p) in here)
        if memory is not None and shared:
            raise KeyPinError(
                f"this machine trusted the vault of app {other!r} ({memory.identity}) at"
                f" {shared[0]}; sst-vault.toml in this clone of that repository now names app"
                f" {app!r}, a vault it never saw",
                "a writer may have replaced the vault: review the commits that changed"
                " sst-vault.toml; if a member renamed the app or made a second vault here,"
                " accept it with `sst-vault key trust` (or pin it)",
            )


def _remote_of(place: str) -> str:
    """The remote URL of a place (`place_of`). Stored URLs have no `#` (no fragment); a folder,
    which a writer names, may: the split is at the first one, so no folder changes the URL."""
    return place.partition("#")[0]


# Credentials sit between "://" and the host, also inside a remote helper's address
# (`gcrypt::https://user:token@host/repo`) and when they hold `?` or `#`.
_USERINFO = re.compile(r"://[^/]*@")


def place_of(url: str, folder: str) -> str:
    """A remote URL without credentials (a CI token) or query string, and the folder of
    sst-vault.toml. Never fails: a URL that does not parse is kept as written, less the
    credentials."""
    from urllib.parse import urlsplit, urlunsplit

    url = _USERINFO.sub("://", url.strip())
    if url.startswith("file://"):
        url = url.removeprefix("file://")
    elif "://" in url:
        url = re.split(r"[?#]", url, maxsplit=1)[0]
        try:
            parts = urlsplit(url)
            port = parts.port
            host = parts.hostname or ""
            netloc = f"{host}:{port}" if port else host
            url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        except ValueError:  # a port that is no number, a broken IPv6 host: as written
            pass
    url = url.rstrip("/").removesuffix(".git")
    return f"{url}#{folder or '.'}"


def forget(home: HomeLayout, app: str) -> bool:
    path = home.root.joinpath(*_memory_parts(app))
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


# --- the record's history in git -----------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One commit that changed the key record (for messages and `key trust`)."""

    commit: str
    author: str
    date: str
    summary: str

    def describe(self) -> str:
        return f"commit {self.commit[:12]} by {self.author} on {self.date} ({self.summary})"


def history_versions(top: Path, *, every_ref: bool = False) -> list[tuple[str, bytes | None]]:
    """Every version of every key record (any folder) in the history reachable from HEAD
    (`every_ref`: from every ref of the clone, as `git log --all`).

    Any folder, not only the current `state_dir`: a writer who moves the vault and edits
    `state_dir` in sst-vault.toml must not hide the record's past from the check.
    """
    from vault.gitstore import iter_blobs, run_git

    pattern = f":(top,glob)**/{RECORD_NAME}"
    proc = run_git(
        top,
        # log.follow (a common ~/.gitconfig line) turns a single pathspec into --follow, and git
        # aborts on a glob with it ("BUG: unsupported magic"): the history must never be lost.
        "-c",
        "log.follow=false",
        "-c",
        "log.showSignature=false",  # gpg's lines would be read as paths
        "log",
        *(["--all"] if every_ref else []),
        "--format=%x00%H",
        "--name-only",
        # A root commit's files too, whatever log.showRoot says: in a shallow clone the first
        # commit it has is the one that holds the record (and the retirement) first.
        "--root",
        "--full-history",
        "--no-renames",
        "--",
        pattern,
    )
    specs: list[tuple[str, str]] = []
    for chunk in proc.out.split("\0")[1:]:
        lines = [ln for ln in chunk.splitlines() if ln.strip()]
        if lines:
            specs += [(lines[0], f"{lines[0]}:{path}") for path in lines[1:]]
    blobs = dict(iter_blobs(top, [spec for _, spec in specs]))
    return [(commit, blobs.get(spec)) for commit, spec in specs]


def last_change(top: Path, rel: str) -> Change | None:
    from vault.gitstore import run_git

    proc = run_git(top, "log", "-1", "--format=%H%x00%an%x00%as%x00%s", "--", rel, check=False)
    fields = proc.out.strip().split("\0")
    if proc.code != 0 or len(fields) != 4:
        return None
    return Change(*fields)


def check_history(
    record: Record | None,
    versions: list[tuple[str, bytes | None]],
    where: str,
    *,
    identity_accepted: bool = False,
) -> None:
    """Refuse a record that went back, forked, vanished or was replaced along the history
    this clone has.

    Only versions that verify count: a version that never verified could not have been
    accepted by anyone, so it is noise, not history. A verified version of *another* vault
    identity means the vault was replaced at some point (re-created by a member, or a whole
    vault forged by a writer, who can sign a chain of their own): refused unless this machine
    accepted the current identity (`key trust`, or `init` here) or a pin names it.
    """
    for commit, data in versions:
        if data is None:
            continue
        hashes = keyrecord.entry_hashes(data)
        if not hashes or (record and record.extends(hashes)):
            continue
        try:
            old = keyrecord.load(data, f"{where} in {commit[:12]}")
        except TrustError:
            continue
        if record is None:
            raise TrustError(
                where,
                f"the key record was deleted after commit {commit[:12]}, which had one",
                f"restore it: git checkout {commit[:12]} -- {where}",
            )
        if old.identity != record.identity:
            if identity_accepted:
                continue
            raise KeyPinError(
                f"{where}: the vault's identity changed: commit {commit[:12]} has"
                f" {old.identity}, the current record is {record.identity}",
                "if a member re-created the vault, review `git log -- "
                f"{where}`, then `sst-vault key trust` (CI: set SST_VAULT_PIN)",
            )
        if old.extends(record.hashes()):
            raise TrustError(
                where,
                f"the key record went back: commit {commit[:12]} had entry {old.newest.seq},"
                f" the current one ends at entry {record.newest.seq}",
                f"restore the newer record: git checkout {commit[:12]} -- {where}",
            )
        raise TrustError(
            where,
            f"the key record forked: commit {commit[:12]} has entry {old.newest.seq} that the"
            " current record does not continue",
            "a removed member may have re-signed an old data key: restore the record from the"
            " commit that every member accepted",
        )


# --- the verified keys ---------------------------------------------------------------------


@dataclass
class Trusted:
    """A verified record, the newest data key it names, and the way to older ones."""

    record: Record
    data_key: bytes
    # Every version of the key record in the history checked (`history_versions`).
    versions: list[tuple[str, bytes | None]] = field(default_factory=list, repr=False)
    _history: dict[str, FileKey] | None = field(default=None, repr=False)
    _retiring: dict[str, set[str]] = field(default_factory=dict, repr=False)
    _every_ref: list[tuple[str, bytes | None]] | None = field(default=None, repr=False)

    @property
    def sealing(self) -> FileKey:
        return keys.data_file_key(self.data_key)

    def retiring_commits(self, key_id: str, top: Path) -> set[str]:
        """The commits whose key record already has the entry that retired data key `key_id`
        (the rotation away from it); empty for the newest key or one no commit retired yet.

        A file sealed under a retired key is genuine only from before its retirement: a
        removed member keeps his old data key and can still seal with it, so review shows such
        a file only from a commit that is a proper ancestor of every one of these.

        Found along every ref of the clone in `top`, not only HEAD's history: a branch the
        removed member forked before his removal can hold his forgery followed by a copy of
        the genuine record, and then its only retiring commit is his own, after the forgery.
        The genuine rotation stays on the member's own branches; more refs only add commits
        here, which only narrows what is shown.
        """
        if key_id in self._retiring:
            return self._retiring[key_id]  # log asks once per version
        if self._every_ref is None:
            self._every_ref = history_versions(top, every_ref=True)
        entries = self.record.entries
        hashes = self.record.hashes()
        found: set[str] = set()
        for n in range(1, len(entries)):
            if entries[n - 1].key_id == key_id and entries[n].key_id != key_id:
                prefix = hashes[: n + 1]
                found = {
                    commit
                    for commit, data in self._every_ref
                    if data is not None
                    and (chain := keyrecord.entry_hashes(data))
                    and chain[: n + 1] == prefix
                }
                break
        self._retiring[key_id] = found
        return found

    def history_keys(self) -> dict[str, FileKey]:
        """Every data key of the chain, newest first, each checked against its entry."""
        if self._history is None:
            found = {self.record.newest.key_id: self.sealing}
            entries = self.record.entries
            current = self.data_key
            for n in range(len(entries) - 1, 0, -1):
                entry, before = entries[n], entries[n - 1]
                if entry.key_id == before.key_id:
                    continue
                older = keyrecord.open_previous_key(entry, current, before.key_id)
                if (
                    older is None
                    or keys.key_id_of(older) != before.key_id
                    or keyrecord.signing_public(older) != before.signing_key
                ):
                    break  # a member's record always opens; stop at anything else
                found[before.key_id] = keys.data_file_key(older)
                current = older
            self._history = found
        return self._history


def load_record(root: Path, parts: tuple[str, ...], app: str) -> Record | None:
    data = safefs.read_bytes(root, parts)
    if data is None:
        return None
    return keyrecord.load(data, str(Path(*parts)), app)


def check_pins(record: Record, last: Callable[[], Change | None]) -> bool:
    """Check SST_VAULT_PIN; True when it is set (and so names this vault's identity).
    `last` names the commit that changed the record, asked only when the pin fails."""
    pinned = env_pin(ENV_PIN)
    if pinned and pinned != record.identity:
        change = last()
        changed = f" since {change.describe()}" if change else ""
        raise KeyPinError(
            f"this vault's identity is {record.identity}{changed}, not the pinned {pinned}"
            f" (${ENV_PIN})",
            "the key record was replaced: review that commit; never re-pin without review",
        )
    return pinned is not None


def check_memory(memory: Memory | None, record: Record, where: str, change: Change | None):
    if memory is None:
        return
    if memory.identity != record.identity:
        changed = f" in {change.describe()}" if change else ""
        raise KeyPinError(
            f"the vault's identity changed to {record.identity}{changed}; this machine trusts"
            f" {memory.identity}",
            "if a member re-created the vault, review that commit, then `sst-vault key trust`",
        )
    hashes = record.hashes()
    if len(hashes) <= memory.seq:
        raise TrustError(
            where,
            f"the key record went back to entry {record.newest.seq}; this machine has seen"
            f" entry {memory.seq}",
            "someone reverted it (a removed member?): restore the newest record from git",
        )
    if hashes[memory.seq] != memory.hash:
        raise TrustError(
            where,
            f"the key record forked at entry {memory.seq} from the one this machine accepted",
            "someone re-signed an old entry (a removed member?): restore it from git",
        )


def check_data_key(record: Record, data_key: bytes, where: Path) -> None:
    newest = record.newest
    if (
        keys.key_id_of(data_key) != newest.key_id
        or keyrecord.signing_public(data_key) != newest.signing_key
    ):
        raise TrustError(
            where,
            f"it holds data key {keys.key_id_of(data_key)}, not {newest.key_id} that the signed"
            " key record names",
            "someone without the data key replaced it: restore it from git",
        )


def check_exact_pin(key_id: str) -> None:
    pinned = env_pin(keys.ENV_KEY_ID)
    if pinned and pinned != key_id:
        raise KeyPinError(
            f"the vault's data key {key_id} is not the pinned {pinned} (${keys.ENV_KEY_ID})",
            "if a member rotated the key, set the new value (`sst-vault key id`)",
        )


def not_a_recipient(path: Path) -> WrongKeyError:
    return WrongKeyError(
        path,
        "this key is not a recipient of the vault",
        "ask a member to run `sst-vault recipients add NAME <your public key>`",
    )
