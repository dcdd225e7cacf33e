"""Hostile paths and concurrent processes: symlinks are never followed, state_dir stays inside
the project, two sst-vault processes on one SST home or repository never interleave."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sstfake
from conftest import SST_CONFIG, VaultProject, git, new_key, run_cli
from helpers import (
    assert_refused,
    before,
    commit_count,
    committed_prod,  # noqa: F401 (a fixture)
    copied_vault_project,  # noqa: F401 (a fixture)
    deploy,
    head,
    holding_flock,
    other_home,
    temp_files,
    tree_state,
)

from vault.errors import ConfigError
from vault.paths import default_sst_home


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder an attacker wants sst-vault to read or overwrite."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "prod.json").write_bytes(b'{"precious": true}\n')
    (folder / "victim.json").write_bytes(b"do not overwrite\n")
    return folder


def plant(link: Path, target: Path) -> None:
    """Replace `link` (file or folder) with a symlink to `target`."""
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.exists() or link.is_symlink():
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def check_untouched(p: VaultProject, outside: Path, before: dict, commit: str) -> None:
    assert tree_state(outside) == before
    assert head(p) == commit
    assert temp_files(p.root, p.home, outside) == []


# --- symlinks in the SST home -------------------------------------------------------------


def home_links(p: VaultProject, outside: Path) -> list[tuple[Path, Path]]:
    """(where the link goes, what it points at): file, app folder and state folder level."""
    state = p.home / "state"
    return [
        (state / "app" / p.app / "prod.json", outside / "prod.json"),
        (state / "app" / p.app, outside),
        (state, outside),
    ]


@pytest.mark.parametrize("level", [0, 1, 2], ids=["file", "app-dir", "state-dir"])
def test_symlink_in_the_sst_home_is_never_followed(
    committed: VaultProject, outside: Path, level: int
):
    p = committed
    if level == 2:  # state/app/<app>/prod.json inside the outside folder, as SST would lay it
        sstfake.write_state(outside, p.app, "prod", marker="outside")
        (outside / "state").rename(outside / "planted")
        link, target = p.home / "state", outside / "planted"
    else:
        link, target = home_links(p, outside)[level]
    plant(link, target)
    before, commit = tree_state(outside), head(p)
    repo = p.snapshot_repo()

    assert_refused(p.cli("commit", "prod"), 1, "symlink")
    assert p.snapshot_repo() == repo
    assert_refused(p.cli("prepare", "prod", "--force"), 1, "symlink")
    assert_refused(p.cli("prepare", "prod"), 1, "symlink")
    check_untouched(p, outside, before, commit)
    assert link.is_symlink()


@pytest.mark.parametrize("folder", [".sst-vault/sync", ".sst-vault", ".sst-vault/lock"])
def test_symlinked_bookkeeping_is_not_written_through(
    committed: VaultProject, outside: Path, folder: str
):
    p = committed
    plant(p.home / folder, outside / "victim.json" if folder.endswith("lock") else outside)
    before, commit = tree_state(outside), head(p)
    deploy(p, "prod", "v2")
    home = p.snapshot_home()
    assert_refused(p.cli("commit", "prod"), 1, "symlink")
    assert_refused(p.cli("prepare", "prod", "--force"), 1, "symlink")
    assert p.snapshot_home() == home
    check_untouched(p, outside, before, commit)


@pytest.mark.parametrize("where", ["home", "repo"])
def test_a_fifo_instead_of_a_file_is_refused_not_waited_on(committed: VaultProject, where: str):
    """Opening a FIFO for reading blocks until a writer comes: a planted one must not hang us."""
    p = committed
    path = p.state_file("app", "prod") if where == "home" else p.vault_file("app", "prod")
    path.unlink()
    os.mkfifo(path)
    deploy(p, "dev")
    for command in (["commit", "prod"], ["prepare", "prod", "--force"]):
        result = p.cli(*command)
        assert_refused(result, 1, "not a regular file")
    assert temp_files(p.root, p.home) == []


# --- symlinks in the repo -------------------------------------------------------------------


@pytest.mark.parametrize("level", ["file", "kind-dir", "state-dir"])
def test_symlink_in_the_vault_is_never_followed(committed: VaultProject, outside: Path, level: str):
    p = committed
    state = p.root / "infra" / "state"
    if level == "file":
        shutil.copy(p.vault_file("app", "prod"), outside / "prod.json.vault")
        link, target = p.vault_file("app", "prod"), outside / "prod.json.vault"
    elif level == "kind-dir":
        shutil.copytree(state / "app", outside / "app")
        link, target = state / "app", outside / "app"
    else:
        shutil.copytree(state, outside / "state")
        link, target = state, outside / "state"
    plant(link, target)
    before, commit = tree_state(outside), head(p)
    home = p.snapshot_home()

    shutil.rmtree(p.home / "state" / "app")  # prepare would have something to write
    home = p.snapshot_home()
    assert_refused(p.cli("prepare", "prod"), 1, "symlink")
    assert p.snapshot_home() == home
    deploy(p, "prod", "v2")
    assert_refused(p.cli("commit", "prod"), 1, "symlink")
    check_untouched(p, outside, before, commit)
    assert link.is_symlink()


# --- state_dir inside the project -----------------------------------------------------------


# The first three must also be refused by commit and prepare once edited into the config.
BAD_STATE_DIRS = [
    "../x",
    "/tmp/x",
    "a/../../b",
    "..",
    "",
    ".git/state",
    "infra/.git/state",
    "a\\..\\..\\b",
    'infra/"state"',  # git quotes these in what it prints: they could never match themselves
    "infra/st\tate",
]


def test_state_dir_outside_the_project_is_refused_at_init(tmp_path: Path, env: dict[str, str]):
    root = tmp_path / "repo"
    root.mkdir()
    git("init", "-q", cwd=root, env=env)
    (root / "sst.config.ts").write_text(SST_CONFIG)
    env = {**env, "SST_VAULT_KEY": new_key(env)}
    before = tree_state(tmp_path)
    for bad in BAD_STATE_DIRS:
        result = run_cli("init", "--no-keyring", "--state-dir", bad, cwd=root, env=env)
        assert_refused(result, 2, "state_dir")
    assert tree_state(tmp_path) == before
    assert not Path("/tmp/x").exists() or not (Path("/tmp/x") / "data-key.age").exists()


def test_state_dir_edited_outside_the_project_is_refused(committed: VaultProject):
    p = committed
    config = p.root / "sst-vault.toml"
    original = config.read_text()
    assert 'state_dir = "infra/state"' in original
    home = p.snapshot_home()
    for bad in BAD_STATE_DIRS:
        escaped = bad.replace("\\", "\\\\")
        config.write_text(original.replace('"infra/state"', f'"{escaped}"'))
        commands = [["status"]]
        if bad in BAD_STATE_DIRS[:3]:
            commands += [["commit", "prod"], ["prepare", "prod"]]
        for command in commands:
            assert_refused(p.cli(*command), 2, "state_dir")
    assert p.snapshot_home() == home
    assert temp_files(p.root, p.home, p.root.parent) == []


# --- two processes at once ------------------------------------------------------------------


def spawn(p: VaultProject, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vault", "--sst-home", str(p.home), *args],
        cwd=p.root,
        env=p.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def without_secret(p: VaultProject) -> dict[str, bytes]:
    # The writers have no secret file: the repo keeps the one committed before them.
    return {k: v for k, v in p.snapshot_home().items() if not k.startswith("secret")}


def test_concurrent_commits_do_not_interleave(committed: VaultProject, tmp_path: Path):
    """Several homes commit different large states into one repository at the same moment."""
    p = committed
    writers = []
    for i in range(3):
        w = other_home(p, tmp_path / f"writer-{i}")
        # A passphrase of its own per writer: a mixed result would pair files of two writers.
        sstfake.write_passphrase(w.home, p.app, "prod", bytes([i + 1]) * 32)
        sstfake.write_state(w.home, p.app, "prod", size=2_000_000, marker=f"writer-{i}", seed=i)
        writers.append(w)
    inputs = [w.snapshot_home() for w in writers]
    before = commit_count(p)

    procs = [spawn(w, "commit", "prod", "--force") for w in writers]
    results = [finish(proc) for proc in procs]
    assert [code for code, _ in results] == [0] * 3, results

    assert commit_count(p) == before + 3
    git("fsck", "--strict", "--no-progress", cwd=p.root, env=p.env)
    assert p.git("status", "--porcelain") == ""
    reader = other_home(p, tmp_path / "reader")
    assert reader.cli("prepare", "prod").code == 0
    assert without_secret(reader) in inputs
    # Every commit in between holds one writer's whole state as well.
    for back in range(1, 3):
        rev = f"HEAD~{back}"
        p.git("checkout", "-q", rev, "--", "infra/state")
        old = other_home(p, tmp_path / f"reader-{back}")
        assert old.cli("prepare", "prod").code == 0
        assert without_secret(old) in inputs
    p.git("checkout", "-q", "HEAD", "--", "infra/state")
    assert temp_files(p.root, *(w.home for w in writers)) == []


def test_concurrent_commits_on_one_home_make_one_commit(committed: VaultProject):
    """Four commits of the same new state at once: one commit, one serial step, all succeed."""
    p = committed
    sstfake.write_state(p.home, p.app, "prod", size=2_000_000, marker="big", seed=7)
    before = commit_count(p)
    procs = [spawn(p, "commit", "prod", "-m", f"writer {i}") for i in range(4)]
    results = [finish(proc) for proc in procs]
    assert [code for code, _ in results] == [0] * 4, results
    assert sum("Committed" in err for _, err in results) == 1, results
    assert commit_count(p) == before + 1
    rows = json.loads(p.cli("status", "--json", "prod").out)
    assert {(r["kind"], r["state"], r["repo_serial"]) for r in rows} == {
        ("passphrase", "in sync", 1),
        ("app", "in sync", 2),
        ("secret", "in sync", 1),
    }
    assert p.git("status", "--porcelain") == ""
    assert temp_files(p.root, p.home) == []


def test_concurrent_prepare_and_commit_on_one_home(committed: VaultProject, tmp_path: Path):
    p = committed
    ci = other_home(p, tmp_path / "ci-home")
    assert ci.cli("prepare", "prod").code == 0
    for round_ in range(2):
        sstfake.write_state(
            ci.home, p.app, "prod", size=2_000_000, marker=f"ci-{round_}", seed=round_
        )
        assert ci.cli("commit", "prod").code == 0
        repo_state = ci.state_file("app", "prod").read_bytes()
        local = p.state_file("app", "prod").read_bytes()
        # p's home is behind: prepare brings the new state while a commit of the old one
        # runs. Whichever takes the home first, the other sees a whole file.
        procs = [
            spawn(p, "prepare", "prod"),
            spawn(p, "commit", "prod"),
            spawn(p, "prepare", "prod"),
            spawn(p, "status", "prod"),
        ]
        results = [finish(proc) for proc in procs]
        assert results[0][0] == 0 and results[2][0] == 0, results
        assert results[1][0] in (0, 1), results
        assert "Traceback" not in "".join(err for _, err in results)
        assert p.state_file("app", "prod").read_bytes() in (repo_state, local)
        assert p.state_file("app", "prod").read_bytes() == repo_state
        assert temp_files(p.root, p.home) == []
        status = p.cli("status", "prod")
        assert status.code == 0 and "diverged" not in status.out and "ahead" not in status.out
    assert commit_count(p) == 4


def test_local_lock_wait_is_bounded(committed: VaultProject):
    """A process holding the home lock makes another one wait, then fail with BusyError."""
    p = committed
    lock = p.home / ".sst-vault" / "lock"
    with holding_flock(lock):
        env = {**p.env, "SST_VAULT_LOCAL_LOCK_WAIT": "0.3"}
        home = p.snapshot_home()
        assert_refused(p.cli("prepare", "prod", "--force", env=env), 1, "another sst-vault")
        assert_refused(p.cli("commit", "prod", env=env), 1, "another sst-vault")
        assert p.snapshot_home() == home


# --- the SST home's default location --------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "environ", "expected"),
    [
        ("linux", {"HOME": "/home/u", "XDG_CONFIG_HOME": "/xdg"}, "/xdg/sst"),
        ("linux", {"HOME": "/home/u"}, "/home/u/.config/sst"),
        ("linux", {"HOME": "/home/u", "XDG_CONFIG_HOME": ""}, "/home/u/.config/sst"),
        ("linux", {"XDG_CONFIG_HOME": "/xdg"}, "/xdg/sst"),
        # Go's filepath.Join cleans: SST uses /xdg/sst, whatever /a is.
        ("linux", {"XDG_CONFIG_HOME": "/a/../xdg/./"}, "/xdg/sst"),
        ("linux", {"HOME": "/home/u/../v"}, "/home/v/.config/sst"),
        ("freebsd14", {"HOME": "/home/u"}, "/home/u/.config/sst"),
        (
            "darwin",
            {"HOME": "/Users/u", "XDG_CONFIG_HOME": "/xdg"},
            "/Users/u/Library/Application Support/sst",
        ),
        (
            "win32",
            {"AppData": r"C:\Users\u\AppData\Roaming", "HOME": "/x"},
            r"C:\Users\u\AppData\Roaming/sst",
        ),
        ("win32", {"APPDATA": r"C:\Users\u\AppData\Roaming"}, r"C:\Users\u\AppData\Roaming/sst"),
    ],
)
def test_default_sst_home(platform: str, environ: dict[str, str], expected: str):
    assert default_sst_home(platform, environ) == Path(expected)


@pytest.mark.parametrize(
    ("platform", "environ", "word"),
    [
        # Go's os.UserConfigDir fails on a relative XDG_CONFIG_HOME (SST then panics): guessing
        # ~/.config would sync a folder SST never reads.
        ("linux", {"HOME": "/home/u", "XDG_CONFIG_HOME": "rel/cfg"}, "relative"),
        ("linux", {}, "HOME"),
        ("darwin", {"XDG_CONFIG_HOME": "/xdg"}, "HOME"),
        ("win32", {"HOME": "/home/u"}, "AppData"),
    ],
)
def test_default_sst_home_errors(platform: str, environ: dict[str, str], word: str):
    with pytest.raises(ConfigError, match=word) as info:
        default_sst_home(platform, environ)
    assert "--sst-home" in str(info.value)


def test_default_sst_home_is_what_the_cli_uses(committed: VaultProject, tmp_path: Path):
    p = committed
    env = {**p.env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    result = run_cli("prepare", "prod", cwd=p.root, env=env)
    assert result.code == 0, result.output
    assert (tmp_path / "xdg" / "sst" / "state" / "app" / p.app / "prod.json").read_bytes() == (
        p.state_file("app", "prod").read_bytes()
    )
    # A relative XDG_CONFIG_HOME is refused, not taken relative to the current folder.
    was = before(p)
    result = run_cli("status", cwd=p.root, env={**env, "XDG_CONFIG_HOME": "relative"})
    assert_refused(result, 2, "XDG_CONFIG_HOME", "--sst-home", project=p, was=was)
    assert not (p.root / "relative").exists()
