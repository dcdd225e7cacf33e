"""Accepting a changed vault identity on this machine, after the user reviewed it (`key trust`).

A member's rotation or recipient change is a signed entry of the key record and is accepted
without asking (`vault.trust`); only a different vault identity (the vault re-created, or a
writer's forgery) stops every command until `sst-vault key trust` has shown the commit that
changed it and the user agreed. This module gathers what is shown and records the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vault import trust

if TYPE_CHECKING:
    from vault.project import Project


@dataclass
class TrustInfo:
    identity: str  # the vault identity of the verified record in the work tree
    remembered: str | None  # what this machine accepted before (None: nothing yet)
    entry: int  # the newest entry of the record
    recipients: dict[str, str]
    change: trust.Change | None  # the last commit of the key record
    uncommitted: bool  # the key record differs from HEAD in this working tree


def trust_info(project: Project) -> TrustInfo:
    """What `key trust` shows before asking: the record as verified, minus this machine's
    memory (which is what the user is about to overrule)."""
    from vault.gitstore import run_git
    from vault.team import require_age

    require_age(project, "key trust")
    memory = trust.recall(project.home, project.app)
    # Every check but the memory's identity: the record verifies, the data key matches it,
    # the pins agree, and it neither went back nor forked along history.
    trusted = project.verify_record(accept_identity=True, remember=False)
    label = project.record_label
    changed = run_git(project.root, "status", "--porcelain", "--", label, check=False)
    return TrustInfo(
        trusted.record.identity,
        memory.identity if memory else None,
        trusted.record.newest.seq,
        trusted.record.recipients,
        trust.last_change(project.root, label),
        bool(changed.stdout.strip()),
    )


def accept(project: Project) -> None:
    """Remember the vault's current identity on this machine (after the user reviewed it)."""
    project.verify_record(accept_identity=True)


__all__ = ["TrustInfo", "accept", "trust_info"]
