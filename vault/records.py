"""The sync records: what was last prepared or committed in one SST home, per stage and kind.

`<home>/.sst-vault/sync/<app>.json` holds, for each stage and kind, the serial and keyed
fingerprint last synced there. It turns `status` into a three-way compare and lets `prepare`
tell a home change that was never committed from a home that is merely behind. A broken
record only costs that compare: it is read as empty.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from vault import safefs
from vault.envelope import Header
from vault.project import Project

RECORDS_VERSION = 1


@dataclass
class SyncRecord:
    """What was last prepared or committed for one stage and kind in this SST home."""

    serial: int
    fingerprint: str
    key_id: str
    action: str  # "prepare" or "commit"
    time: str


class Records:
    """The sync records of one app in one SST home: <home>/.sst-vault/sync/<app>.json."""

    def __init__(self, project: Project) -> None:
        self.root = project.home.root
        self.parts = (".sst-vault", "sync", f"{project.app}.json")
        raw = safefs.read_bytes(self.root, self.parts) if self.root.is_dir() else None
        self.data: dict[str, dict[str, dict]] = {}
        if raw:
            try:
                loaded = json.loads(raw)
                if loaded.get("version") == RECORDS_VERSION:
                    self.data = loaded.get("stages", {})
            except (ValueError, AttributeError):
                self.data = {}  # a broken record only costs the three-way compare

    def get(self, stage: str, kind: str) -> SyncRecord | None:
        entry = self.data.get(stage, {}).get(kind)
        try:
            return SyncRecord(**entry) if entry else None
        except TypeError:
            return None

    def set(self, stage: str, kind: str, header: Header, action: str) -> None:
        record = SyncRecord(header.serial, header.fingerprint, header.key_id, action, _now())
        self.data.setdefault(stage, {})[kind] = asdict(record)

    def confirm(self, stage: str, kind: str, header: Header, action: str, force: bool) -> None:
        """Record a repo file found equal to the home, unless that lowers the serial remembered.

        After a `rollback`, an older file can hold the home's exact content; a writer who pushes
        it back must not lower the serial this home remembers, or the versions in between would
        pass the rollback check (`--force` may go back).
        """
        record = self.get(stage, kind)
        if force or record is None or header.serial >= record.serial:
            self.set(stage, kind, header, action)

    def stages(self) -> set[str]:
        return set(self.data)

    def _body(self) -> bytes:
        return json.dumps({"version": RECORDS_VERSION, "stages": self.data}, indent=1).encode()

    def save(self) -> None:
        safefs.write_atomic(self.root, self.parts, self._body())

    def pending(self) -> safefs.PendingFile:
        """The records, written and waiting to be replaced with the files they describe."""
        with safefs.AtomicWriter(self.root, self.parts) as out:
            out.write(self._body())
            return out.finish()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def user_name(default: str = "unknown") -> str:
    """The login name of whoever runs sst-vault (`default` where the system has none): the one
    way the writer of a vault file, the holder of a deploy lock and `init`'s first member are
    named."""
    import getpass  # only where it is used: it costs start-up time

    try:
        return getpass.getuser() or default
    except (KeyError, OSError):
        return default


def writer_name() -> str:
    """`user@host`: who wrote a vault file (its clear header) or a key record entry."""
    import socket

    return f"{user_name()}@{socket.gethostname()}"


__all__ = [
    "Records",
    "SyncRecord",
    "user_name",
    "writer_name",
]
