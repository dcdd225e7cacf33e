"""safefs.Transaction and Journal on a real file system: all files or none.

The CLI-level kill -9 cases are in test_interrupted.py; here the library's own guarantees:
a failure half-way puts back what was already replaced, and a journal left behind (as a
killed process leaves it) is rolled forward, or back, by `Journal.recover`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vault import safefs
from vault.errors import UnsafePathError

NAMES = ("a.json", "b.json", "c.json")


def setup(root: Path) -> safefs.Journal:
    (root / "d").mkdir()
    for name in NAMES:
        (root / "d" / name).write_text(f"old {name}")
    return safefs.Journal(root, (".journal",), root)


def pending(root: Path, name: str, text: str) -> safefs.PendingFile:
    with safefs.AtomicWriter(root, ("d", name)) as out:
        out.write(text.encode())
        return out.finish()


def contents(root: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((root / "d").iterdir())}


def test_a_failure_half_way_puts_back_what_was_replaced(tmp_path: Path):
    journal = setup(tmp_path)
    before = contents(tmp_path)
    with pytest.raises(UnsafePathError), safefs.Transaction(journal) as txn:
        for name in NAMES:
            txn.add(pending(tmp_path, name, f"new {name}"))
        # A symlink planted at the second target: its replace is refused after the first.
        (tmp_path / "d" / "b.json").unlink()
        (tmp_path / "d" / "b.json").symlink_to(tmp_path / "elsewhere")
        txn.commit()
    (tmp_path / "d" / "b.json").unlink()
    (tmp_path / "d" / "b.json").write_text("old b.json")
    assert contents(tmp_path) == before
    assert journal.pending() == []


def test_commit_replaces_every_file_and_leaves_nothing(tmp_path: Path):
    journal = setup(tmp_path)
    with safefs.Transaction(journal) as txn:
        for name in (*NAMES, "new.json"):
            txn.add(pending(tmp_path, name, f"new {name}"))
        txn.commit()
    assert contents(tmp_path) == {n: f"new {n}" for n in (*NAMES, "new.json")}
    assert journal.pending() == []


def test_keep_then_undo_puts_back_old_and_removes_new_files(tmp_path: Path):
    setup(tmp_path)
    before = contents(tmp_path)
    with safefs.Transaction() as txn:
        txn.add(pending(tmp_path, "a.json", "new a"))
        txn.add(pending(tmp_path, "fresh.json", "new fresh"))
        txn.commit(keep=True)
        assert contents(tmp_path)["a.json"] == "new a"
        txn.undo()
    assert contents(tmp_path) == before


def _left_journal(root: Path, journal: safefs.Journal, state: str, replaced: int) -> None:
    """What a process killed after `replaced` renames leaves: temps, links and its journal."""
    entries = []
    for i, name in enumerate(NAMES):
        new = pending(root, name, f"new {name}")
        backup = f"{safefs.TEMP_PREFIX}{i}backup"
        os.link(root / "d" / name, root / "d" / backup)
        entries.append({"parts": ["d", name], "tmp": new.tmp_name, "backup": backup})
        if i < replaced:
            new.replace()
    journal.write("txn-killed.json", state, entries)


@pytest.mark.parametrize("replaced", [0, 1, 3])
def test_recover_rolls_a_journal_forward(tmp_path: Path, replaced: int):
    journal = setup(tmp_path)
    _left_journal(tmp_path, journal, "forward", replaced)
    journal.recover()
    assert contents(tmp_path) == {n: f"new {n}" for n in NAMES}
    assert journal.pending() == []
    journal.recover()  # idempotent
    assert contents(tmp_path) == {n: f"new {n}" for n in NAMES}


@pytest.mark.parametrize("replaced", [0, 2])
def test_recover_rolls_a_failed_change_back(tmp_path: Path, replaced: int):
    journal = setup(tmp_path)
    before = contents(tmp_path)
    _left_journal(tmp_path, journal, "back", replaced)
    journal.recover()
    assert contents(tmp_path) == before


def test_a_journal_naming_paths_outside_is_refused(tmp_path: Path):
    journal = setup(tmp_path)
    (tmp_path / ".journal").mkdir()
    bad = {"parts": ["..", "etc", "passwd"], "tmp": f"{safefs.TEMP_PREFIX}x", "backup": None}
    body = {"version": 1, "state": "forward", "files": [bad]}
    (tmp_path / ".journal" / "txn-bad.json").write_text(json.dumps(body))
    with pytest.raises(UnsafePathError, match="not a journal"):
        journal.recover()


def test_sweep_removes_only_temporary_files_and_never_follows_links(tmp_path: Path):
    setup(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / f"{safefs.TEMP_PREFIX}keep").write_text("not ours to remove")
    (tmp_path / "d" / "link").symlink_to(outside)
    (tmp_path / "d" / f"{safefs.TEMP_PREFIX}left").write_text("plaintext")
    found = safefs.find_temp(tmp_path, [(("d",), 2)])
    assert found == [tmp_path / "d" / f"{safefs.TEMP_PREFIX}left"]
    assert safefs.sweep_temp(tmp_path, [(("d",), 2)]) == found
    assert not found[0].exists()
    assert (outside / f"{safefs.TEMP_PREFIX}keep").exists()
    assert (tmp_path / "d" / "a.json").read_text() == "old a.json"
