"""Attacks found by an independent review, played with the CLI, git and the `age` CLI only.

Same team as test_trust_attacks.py (ci made the vault, bob and carol were added; prod and dev
are committed and pushed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_trust_attacks as attacks
from conftest import git
from helpers import assert_refused, deploy, vault_header
from lockutil import DEPLOY
from test_trust_attacks import RECORD, STATE, age_open, ok, pull, show

from vault import trust

# The attack team of test_trust_attacks.py, its fixtures shared.
template = attacks.template
team = attacks.team


def _wait_for(proc: subprocess.Popen, path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {path.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"never said {text!r}: {path.read_text()}")


def test_run_never_seals_under_a_data_key_retired_by_what_it_pulled(team, tmp_path: Path):
    """CI's `run` reads the vault's keys before it pulls. A removal (a rotation) that lands in
    between (here while `run` waits for the deploy lock of a new preview stage) must not leave
    CI sealing the new stage under the data key the removed member still holds."""
    runner = team.clone("ci", "runner-repo")  # a fresh CI clone, CI's key, pinned
    runner.env["SST_VAULT_PIN"] = ok(runner, "key", "pin").out.strip().split("=")[-1]
    carol = team.clone("carol", "carol-repo")
    old_key_id = vault_header(runner.vault_file("app", "prod"))["key_id"]

    # Someone holds pr1's deploy lock (a deploy of it is under way); CI's run waits for it.
    ok(carol, "lock", "acquire", "--stage", "pr1")
    script = tmp_path / "deploy.py"
    script.write_text(DEPLOY)
    tests = str(Path(__file__).resolve().parent)
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vault",
                "--sst-home",
                str(runner.home),
                "run",
                "--stage",
                "pr1",
                "--lock-timeout",
                "120",
                "--",
                sys.executable,
                str(script),
                tests,
                str(runner.home),
                runner.app,
                "pr1",
            ],
            cwd=runner.root,
            env=runner.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(proc, log, "waiting for the deploy lock")
        # Meanwhile carol removes bob: a new data key, pushed.
        ok(carol, "recipients", "remove", "bob", "--push")
        ok(carol, "lock", "release", "--stage", "pr1")
        assert proc.wait(120) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    pull(carol)
    newest = json.loads(show(carol.root, carol.env, "HEAD", RECORD).splitlines()[-1])["entry"]
    assert newest["key_id"] != old_key_id
    assert "bob" not in newest["recipients"]
    committed = vault_header(carol.vault_file("app", "pr1"))
    # Bob opens the data key of before his removal with his age key, from history.
    rotation = git("log", "-1", "--format=%H", "--", RECORD, cwd=carol.root).strip()
    old_wrapped = show(carol.root, carol.env, f"{rotation}~1", f"{STATE}/data-key.age")
    assert age_open(old_wrapped, team.keys["bob"]) is not None
    assert committed["key_id"] == newest["key_id"], (
        f"CI sealed pr1 under {committed['key_id']}, the data key bob (removed) still holds"
    )


def test_run_never_pushes_a_new_stage_sealed_under_a_key_retired_during_the_deploy(
    team, tmp_path: Path
):
    """The same race, later: the rotation lands while the deploy of a new preview stage runs
    (it takes minutes; `recipients remove --push` locks only the stages the repo has). `run`
    then seals under the data key it read at its start, its push is rejected, rebased over the
    rotation (which did not touch the new stage's files) and lands after it."""
    runner = team.clone("ci", "runner-repo")
    carol = team.clone("carol", "carol-repo")
    old_key_id = vault_header(runner.vault_file("app", "prod"))["key_id"]
    proc, go, log = _slow_run(runner, tmp_path)
    ok(carol, "recipients", "remove", "bob", "--push")
    code = _finish(proc, go)
    pull(carol)
    newest = json.loads(show(carol.root, carol.env, "HEAD", RECORD).splitlines()[-1])["entry"]
    assert "bob" not in newest["recipients"] and newest["key_id"] != old_key_id
    # run sealed pr1 again under the new data key and pushed that: the deploy's state landed,
    # and nothing sealed under the data key bob holds ever reached the remote.
    assert code == 0, log.read_text()
    assert "sealing pr1's state again under the new data key" in log.read_text()
    landed = carol.vault_file("app", "pr1")
    assert vault_header(landed)["key_id"] == newest["key_id"], log.read_text()
    pr1 = f"{STATE}/app/pr1.json.vault"
    versions = git("rev-list", "--all", "--", pr1, cwd=team.remote).split()  # rescue refs too
    assert versions
    for sha in versions:
        sealed = show(team.remote, carol.env, sha, pr1)
        assert sealed is None or vault_header(sealed)["key_id"] != old_key_id, sha


def test_a_renamed_app_does_not_make_a_machine_forget_the_vault_it_trusts(team, tmp_path: Path):
    """A writer renames the app in sst-vault.toml and puts in a vault of his own (his record,
    his data key wrapped to the members' public keys, which the record shows). A machine that
    remembers the vault must refuse it with no pin, also from a shallow clone (no history to
    compare with): it remembers where it used the vault (the clone's remote URL, which no push
    changes, and sst-vault.toml's folder), not only under which app name."""
    ok(team.ci, "recipients", "list")  # ci's machine uses the vault from its clone of the remote
    mallory = attacks.attacker_clone(team)
    scratch = tmp_path / "mallory-vault"
    env = {**mallory.env, "SST_VAULT_KEY": attacks.age_key(tmp_path / "m", "m").secret}
    git("init", "-q", str(scratch), cwd=tmp_path, env=env)
    (scratch / "sst.config.ts").write_text(
        'export default $config({ app() { return { name: "evil", home: "local" }; } });\n'
    )
    git("add", ".", cwd=scratch, env=env)
    git("commit", "-qm", "x", cwd=scratch, env=env)
    mine = attacks.VaultProject(scratch, tmp_path / "m-home", env, env["SST_VAULT_KEY"])
    ok(mine, "init", "--no-keyring", "--name", "m")
    ok(mine, "recipients", "add", "ci", team.keys["ci"].public)
    config = mallory.root / "sst-vault.toml"
    config.write_text(config.read_text().replace('app = "demo-app"', 'app = "evil"'))
    for name in ("key-record.jsonl", "data-key.age"):
        (mallory.root / STATE / name).write_bytes((scratch / STATE / name).read_bytes())
    attacks.attacker_push(mallory)
    # ci's machine (its SST home remembers the vault), in a shallow clone.
    shallow = tmp_path / "ci-shallow"
    git("clone", "-q", "--depth", "1", f"file://{team.remote}", str(shallow), cwd=tmp_path)
    ci = team.person("ci", shallow, home="ci-sst-home")
    assert (ci.home / ".sst-vault" / "trust" / "demo-app.json").exists()
    result = ci.cli("recipients", "list")
    assert_refused(result, 1, "trusted the vault of app 'demo-app'", "'evil'", "key trust")
    assert "m " not in result.out and not (ci.home / ".sst-vault" / "trust" / "evil.json").exists()
    # The same from a branch with no history in common (a full clone: nothing to compare with).
    orphan = tmp_path / "ci-orphan"
    git("clone", "-q", str(team.remote), str(orphan), cwd=tmp_path)
    git("checkout", "-q", "--orphan", "fresh", cwd=orphan, env=ci.env)
    git("commit", "-q", "-m", "fresh start", cwd=orphan, env=ci.env)
    on_orphan = team.person("ci", orphan, home="ci-sst-home").cli("recipients", "list")
    assert_refused(on_orphan, 1, "trusted the vault of app 'demo-app'", "key trust")
    # What the hint names is what accepts it (after a review): `key trust`, from this place.
    assert ci.cli("key", "trust", "--yes").code == 0
    assert ci.cli("recipients", "list").code == 0


def test_commit_push_never_lands_state_sealed_under_a_key_retired_meanwhile(team):
    """A member commits a new stage with --push while another removes bob: the push meets the
    rotation, is refused in one line that says how to seal again, and nothing sealed under the
    data key bob holds reaches the remote. Following the hint lands it under the new key."""
    dev = team.clone("ci", "dev-repo")
    carol = team.clone("carol", "carol-repo")
    old_key_id = vault_header(dev.vault_file("app", "prod"))["key_id"]
    deploy(dev, "pr2", "preview")
    ok(carol, "recipients", "remove", "bob", "--push")
    refused = dev.cli("commit", "pr2", "--push")
    line = assert_refused(refused, 1, "changed the vault's keys", "git reset --keep", out=None)
    assert "commit pr2 --push" in line
    pr2 = f"{STATE}/app/pr2.json.vault"
    assert git("rev-list", "--all", "--", pr2, cwd=team.remote).split() == []
    # The hint, followed: drop the commit, pull, commit again.
    git("reset", "-q", "--keep", "HEAD~1", cwd=dev.root, env=dev.env)
    pull(dev)
    ok(dev, "commit", "pr2", "--push")
    newest = json.loads(show(team.remote, dev.env, "main", RECORD).splitlines()[-1])["entry"]
    landed = show(team.remote, dev.env, "main", pr2)
    assert landed and vault_header(landed)["key_id"] == newest["key_id"] != old_key_id


def test_the_places_a_machine_remembers_hold_no_credentials(team):
    """CI clones over https with a token in the URL: the memory keeps the place, never it."""
    ci = team.clone("ci", "token-repo")
    url = "https://x-access-token:ghs_SECRET123@example.invalid:8443/org/app.git"
    git("remote", "set-url", "origin", url, cwd=ci.root, env=ci.env)
    ok(ci, "prepare", "prod")  # the first prepare makes the SST home, and the memory in it
    memory = json.loads((ci.home / ".sst-vault" / "trust" / "demo-app.json").read_text())
    assert "https://example.invalid:8443/org/app#." in memory["places"], memory
    assert "SECRET123" not in json.dumps(memory) and "x-access-token" not in json.dumps(memory)


def _slow_run(runner, tmp_path: Path, stage: str = "pr1"):
    """`run --stage STAGE` of a deploy that waits for the file `go` once it wrote its state."""
    script = tmp_path / "deploy.py"
    script.write_text(DEPLOY)
    tests = str(Path(__file__).resolve().parent)
    go, started = tmp_path / "go", tmp_path / "started"
    slow = (
        f"touch {started}; {sys.executable} {script} {tests} {runner.home} {runner.app} {stage};"
        f" while [ ! -f {go} ]; do sleep 0.05; done"
    )
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vault",
                "--sst-home",
                str(runner.home),
                "run",
                "--stage",
                stage,
                "--",
                "sh",
                "-c",
                slow,
            ],
            cwd=runner.root,
            env=runner.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while not started.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(log.read_text())
        time.sleep(0.05)
    return proc, go, log


def _finish(proc: subprocess.Popen, go: Path) -> int:
    go.touch()
    try:
        return proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_run_that_cannot_seal_again_after_a_rotation_keeps_the_lock_and_says_where_the_state_is(
    team, tmp_path: Path
):
    """CI pins the exact data key (SST_VAULT_KEY_ID). A removal lands during a preview deploy:
    `run` drops its commit to seal again, and its check of the vault it pulled refuses the new
    data key (the pin must be updated). The deployed state is then in no commit, only in the
    runner's SST home: the stage must stay locked and the message must say so."""
    runner = team.clone("ci", "runner-repo")
    runner.env["SST_VAULT_KEY_ID"] = ok(runner, "key", "id").out.strip().split("=")[-1]
    carol = team.clone("carol", "carol-repo")
    proc, go, log = _slow_run(runner, tmp_path)
    ok(carol, "recipients", "remove", "bob", "--push")
    code = _finish(proc, go)
    text = log.read_text()
    assert code == 1, text
    errors = [ln for ln in text.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1, text
    assert "SST_VAULT_KEY_ID" in errors[0] and f"only in {runner.home / 'state'}" in errors[0]
    assert "`sst-vault lock release --stage pr1`" in errors[0], errors[0]
    assert "stays held" in text, text
    assert "locked by" in ok(carol, "lock", "status", "--stage", "pr1").out
    # The hint, followed: the new pin, then commit and release.
    runner.env["SST_VAULT_KEY_ID"] = ok(carol, "key", "id").out.strip().split("=")[-1]
    ok(runner, "commit", "pr1", "--push")
    ok(runner, "lock", "release", "--stage", "pr1")
    newest = json.loads(show(team.remote, runner.env, "main", RECORD).splitlines()[-1])["entry"]
    landed = show(team.remote, runner.env, "main", f"{STATE}/app/pr1.json.vault")
    assert landed and vault_header(landed)["key_id"] == newest["key_id"]


def test_run_never_rescues_an_earlier_local_commit_as_its_state_after_a_rotation(
    team, tmp_path: Path
):
    """A member's clone holds an unpushed commit of dev (sealed before bob's removal) when
    `run --stage pr1` meets the rotation. Dropping only its own commit and pulling would meet
    dev's clash; it then pushed the dev commit to a rescue ref named after pr1 and said pr1's
    state was there. Now: nothing is dropped or pushed anywhere, the lock stays held."""
    runner = team.clone("ci", "runner-repo")
    carol = team.clone("carol", "carol-repo")
    ok(runner, "prepare", "dev")
    deploy(runner, "dev", "d2")
    ok(runner, "commit", "dev")  # local, unpushed
    proc, go, log = _slow_run(runner, tmp_path)
    ok(carol, "recipients", "remove", "bob", "--push")
    code = _finish(proc, go)
    text = log.read_text()
    assert code == 1, text
    assert "changed the vault's keys" in text and "stays held" in text, text
    assert git("for-each-ref", "refs/sst-vault/rescue", cwd=team.remote) == "", text
    head = git("log", "-1", "--format=%B", cwd=runner.root, env=runner.env)
    assert "run --stage pr1" in head, head  # pr1's commit was kept in this clone
    assert "locked by" in ok(carol, "lock", "status", "--stage", "pr1").out


def test_commit_push_rebases_over_a_recipient_added_meanwhile(team):
    """`recipients add` wraps the same data key to one more member: nothing sealed under it
    is retired, so a `commit --push` that meets it is rebased and lands as before."""
    dev = team.clone("ci", "dev-repo")
    carol = team.clone("carol", "carol-repo")
    deploy(dev, "pr2", "preview")
    ok(carol, "recipients", "add", "dave", team.keys["dave"].public)
    git("push", "-q", "origin", "HEAD:main", cwd=carol.root, env=carol.env)
    ok(dev, "commit", "pr2", "--push")
    assert show(team.remote, dev.env, "main", f"{STATE}/app/pr2.json.vault")
    record = show(team.remote, dev.env, "main", RECORD)
    assert "dave" in json.loads(record.splitlines()[-1])["entry"]["recipients"]


def test_a_rotation_never_lands_over_a_stage_it_did_not_reseal(team, tmp_path: Path):
    """carol removes bob. Between her pull and her push, a member's first deploy of pr3
    (sealed under the data key before: no lock of hers covered a stage the repo did not have)
    reaches the remote. Rebased onto it, the rotation would leave pr3 under the data key bob
    holds, and no prepare would open it. The rotation is done again from what the remote has
    instead (its first commit dropped, and what carol's machine remembered of it), so pr3 is
    sealed under the new data key with the rest."""
    carol = team.clone("carol", "carol-repo")
    dev = team.clone("ci", "dev-repo")
    deploy(dev, "pr3", "preview")
    ok(dev, "commit", "pr3")  # pushed by the hook below, at the worst moment
    hook = carol.root / ".git" / "hooks" / "pre-push"
    hook.write_text(
        "#!/bin/sh\n"
        "while read local_ref local_sha remote_ref remote_sha; do\n"
        f'  if [ "$remote_ref" = refs/heads/main ] && [ ! -e "{tmp_path}/pushed" ]; then\n'
        f'    touch "{tmp_path}/pushed"\n'
        "    unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_PREFIX\n"
        f'    git -C "{dev.root}" push -q origin HEAD:main || exit 1\n'
        "  fi\n"
        "done\n"
    )
    hook.chmod(0o755)
    removed = carol.cli("recipients", "remove", "bob", "--push")
    assert removed.code == 0, removed.output
    assert "changed the state folder meanwhile" in removed.err
    newest = json.loads(show(team.remote, carol.env, "main", RECORD).splitlines()[-1])["entry"]
    assert "bob" not in newest["recipients"]
    for kind in ("app", "passphrase"):
        sealed = show(team.remote, carol.env, "main", f"{STATE}/{kind}/pr3.json.vault")
        assert sealed and vault_header(sealed)["key_id"] == newest["key_id"]
    # One rotation landed, after pr3: its first try never left carol's clone.
    rotations = git("log", "--format=%s", "main", cwd=team.remote).count("remove recipient bob")
    assert rotations == 1
    assert ok(carol, "prepare", "pr3").code == 0  # and her machine trusts what landed


def _writer_vault(team, tmp_path: Path) -> Path:
    """A vault of mallory's own (app "evil"), with ci's public key added (the record shows it)."""
    scratch = tmp_path / "mallory-vault"
    env = attacks.base_env(tmp_path)
    env["SST_VAULT_KEY"] = attacks.age_key(tmp_path / "m", "m").secret
    git("init", "-q", str(scratch), cwd=tmp_path, env=env)
    (scratch / "sst.config.ts").write_text(
        'export default $config({ app() { return { name: "evil", home: "local" }; } });\n'
    )
    git("add", ".", cwd=scratch, env=env)
    git("commit", "-qm", "x", cwd=scratch, env=env)
    mine = attacks.VaultProject(scratch, tmp_path / "m-home", env, env["SST_VAULT_KEY"])
    ok(mine, "init", "--no-keyring", "--name", "m")
    ok(mine, "recipients", "add", "ci", team.keys["ci"].public)
    return scratch / STATE


def test_a_renamed_app_in_another_folder_of_the_repo_is_refused_too(team, tmp_path: Path):
    """The folder of sst-vault.toml is the writer's to choose as well: he moves the project
    into a subfolder (or adds an sst-vault.toml above or below the remembered one, where a
    member runs the CLI), renames the app and puts in his own record and data key. A machine
    that used the vault in a clone of this repository refuses it with no pin, from a shallow
    clone, whatever the folder."""
    ok(team.ci, "recipients", "list")  # ci's machine remembers the vault at "<remote>#."
    theirs = _writer_vault(team, tmp_path)
    mallory = attacks.attacker_clone(team)
    (mallory.root / "app").mkdir()
    for name in ("sst-vault.toml", "sst.config.ts", "infra"):
        git("mv", name, f"app/{name}", cwd=mallory.root, env=mallory.env)
    config = mallory.root / "app" / "sst-vault.toml"
    config.write_text(config.read_text().replace('app = "demo-app"', 'app = "evil"'))
    for name in ("key-record.jsonl", "data-key.age"):
        (mallory.root / "app" / STATE / name).write_bytes((theirs / name).read_bytes())
    attacks.attacker_push(mallory)
    shallow = tmp_path / "ci-shallow"
    git("clone", "-q", "--depth", "1", f"file://{team.remote}", str(shallow), cwd=tmp_path)
    ci = team.person("ci", shallow / "app", home="ci-sst-home")
    result = ci.cli("recipients", "list")
    assert_refused(result, 1, "trusted the vault of app 'demo-app'", "'evil'", "key trust")
    assert "m " not in result.out and not (ci.home / ".sst-vault" / "trust" / "evil.json").exists()
    # A folder whose name holds "#" (the separator of a place) changes nothing.
    git("mv", "app", "a#b", cwd=shallow, env=ci.env)
    moved = team.person("ci", shallow / "a#b", home="ci-sst-home").cli("recipients", "list")
    assert_refused(moved, 1, "trusted the vault of app 'demo-app'", "key trust")


@pytest.mark.parametrize(
    "url",
    [
        "https://x-access-token:SECRET1@example.invalid/org/app.git",
        "https://SECRET1@example.invalid/org/app",
        "ssh://git:SECRET1@example.invalid:22/org/app.git",
        "https://example.invalid/org/app.git?token=SECRET1",
        "https://u:SECRET1@[::1/org/app",  # does not parse: no crash, no credentials
        "https://u:SECRET1@example.invalid:notaport/org/app",
        "https://u:SEC#RET1@example.invalid/org/app",
        "gcrypt::https://u:SECRET1@example.invalid/org/app",
        "file://u:SECRET1@localhost/srv/app.git",
    ],
)
def test_a_place_never_holds_credentials_whatever_the_url_form(url: str):
    place = trust.place_of(url, "infra")
    assert "SECRET1" not in place and "SEC" not in place, place
    assert place.endswith("/org/app#infra") or place.endswith("/srv/app#infra"), place
