"""`rollback`, `rotate` and `recipients remove` with --push: under the deploy locks, like `run`.

They re-seal stages outside `run`; with --push they pull, change, commit and push while holding
the deploy lock of every stage they touch, so a deploy of one of those stages can never be
re-sealed under an old key or rolled back between its pull and its push. Real clones of a
real bare remote, as in test_lock.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import VaultProject, new_key
from helpers import assert_refused, before, deploy, key_id, public_of
from lockutil import STAGE, counter_of, make_team

REF = f"refs/sst-vault/locks/demo-app/{STAGE}"


def remote_head(team) -> str:
    return team.remote_git("rev-parse", "main").strip()


def test_rotate_push_refuses_while_a_stage_is_locked_then_pushes(tmp_path: Path) -> None:
    team = make_team(tmp_path, seeded=True)
    a, b = team.clone("a"), team.clone("b")
    old_id = key_id(a)
    published = remote_head(team)
    assert b.cli("lock", "acquire", "--stage", STAGE).code == 0  # b is deploying prod

    was = before(a)
    refused = a.cli("rotate", "--push")
    assert_refused(refused, 1, "is held by", f"lock break --stage {STAGE}", project=a, was=was)
    assert remote_head(team) == published
    assert team.lock_refs() == [REF]  # only b's: nothing of a's was left behind

    assert b.cli("lock", "release", "--stage", STAGE).code == 0
    rotated = a.cli("rotate", "--push")
    assert rotated.code == 0, rotated.output
    assert "and pushed it" in rotated.err
    assert remote_head(team) == a.git("rev-parse", "HEAD").strip() != published
    assert team.lock_refs() == []
    new_id = key_id(a)
    assert new_id != old_id

    # b's next deploy starts from the rotated vault.
    b.git("pull", "-q")
    assert key_id(b) == new_id
    assert b.cli("prepare", STAGE).code == 0


def test_rollback_push_holds_the_stage_lock(tmp_path: Path) -> None:
    team = make_team(tmp_path, seeded=True)
    a, b = team.clone("a"), team.clone("b")
    seeded = a.git("rev-parse", "HEAD").strip()
    assert a.cli("prepare", STAGE).code == 0
    deploy(a, STAGE, counter=5)
    assert a.cli("commit", STAGE, "--push").code == 0
    published = remote_head(team)

    assert b.cli("lock", "acquire", "--stage", STAGE).code == 0
    was = before(a)
    refused = a.cli("rollback", STAGE, "--to", seeded, "--push")
    assert_refused(refused, 1, "is held by", project=a, was=was)
    assert remote_head(team) == published

    assert b.cli("lock", "release", "--stage", STAGE).code == 0
    result = a.cli("rollback", STAGE, "--to", seeded, "--push", "--prepare")
    assert result.code == 0, result.output
    assert "and pushed it" in result.err
    assert remote_head(team) == a.git("rev-parse", "HEAD").strip() != published
    assert team.lock_refs() == []
    assert counter_of(a) == 0  # the seeded state, applied by --prepare


def test_rotate_push_keeps_a_recipient_added_meanwhile(tmp_path: Path) -> None:
    """The change runs on the vault as the pull left it, not as this clone last saw it."""
    team = make_team(tmp_path, seeded=True)
    a, b = team.clone("a"), team.clone("b")
    dave_key = new_key(a.env)
    dave = VaultProject(b.root, tmp_path / "dave-sst-home", dict(b.env, SST_VAULT_KEY=dave_key), "")
    dave_public = public_of(dave)
    assert dave_public.startswith("age1")
    added = b.cli("recipients", "add", "dave", dave_public)
    assert added.code == 0, added.output
    b.git("push", "-q")

    rotated = a.cli("rotate", "--push")  # a has not pulled b's change
    assert rotated.code == 0, rotated.output
    listing = dict(line.split() for line in a.cli("recipients", "list").out.splitlines())
    assert listing["dave"] == dave_public
    b.git("pull", "-q")
    result = dave.cli("prepare", STAGE)
    assert result.code == 0, result.output
    assert json.loads(dave.state_file("app", STAGE).read_text())["counter"] == 0


def test_recipients_remove_push_and_push_without_a_remote(tmp_path: Path) -> None:
    team = make_team(tmp_path, seeded=True)
    a = team.clone("a")
    eve_key = new_key(a.env)
    eve = VaultProject(a.root, tmp_path / "eve-sst-home", dict(a.env, SST_VAULT_KEY=eve_key), "")
    assert a.cli("recipients", "add", "eve", public_of(eve)).code == 0
    assert a.cli("recipients", "remove", "eve", "--push").code == 0
    assert remote_head(team) == a.git("rev-parse", "HEAD").strip()
    assert team.lock_refs() == []
    assert_refused(eve.cli("prepare", STAGE), 1, "not a recipient", project=eve, was=before(eve))

    a.git("remote", "remove", "origin")
    was = before(a)
    assert_refused(a.cli("rotate", "--push"), 1, "no remote named 'origin'", project=a, was=was)
