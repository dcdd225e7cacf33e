"""End to end with the real SST CLI: SST writes secrets, sst-vault commits them encrypted, the SST
home is wiped (and a second machine starts empty), sst-vault prepares it, SST reads it back.

SST cannot deploy offline (it downloads pulumi and needs a cloud), so the `app` checkpoint comes
from tests/sstfake.py, with a secret output encrypted under SST's own passphrase: the real
`sst state export --decrypt` opening it proves that `app` and `passphrase` came back together.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import sst_real
import sstfake
from conftest import skip_or_fail

APP = "vaulte2e"
pytestmark = pytest.mark.real_sst


def vault(
    sst: sst_real.SstProject,
    key: str,
    *args: str,
    home: Path | None = None,
    env: dict[str, str] | None = None,
    code: int | None = 0,
    sst_home_flag: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`sst-vault --sst-home HOME ARGS` (HOME: SST's own home unless given; no flag at all with
    `sst_home_flag=False`); `env` is added to (and overrides) the base environment; `code` is
    the exit code expected (None: any)."""
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(sst.root / "home"),
        "TMPDIR": str(sst.root / "tmp"),
        "SST_VAULT_KEY": key,
        # Never reach for a desktop keyring from a test.
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    # This checkout's `vault`, whether or not it is pip-installed.
    base["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(sst_real.REPO), os.environ.get("PYTHONPATH")) if p
    )
    base.update(env or {})
    flag = ["--sst-home", str(home or sst.sst_home)] if sst_home_flag else []
    cmd = [sys.executable, "-m", "vault", *flag, *args]
    out = subprocess.run(
        cmd,
        cwd=sst.project,
        env=base,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    if code is not None:
        assert out.returncode == code, (
            f"sst-vault {' '.join(args)}: {out.returncode}\n{out.stdout}{out.stderr}"
        )
    return out


def generate_key(sst: sst_real.SstProject) -> str:
    return subprocess.run(
        [sys.executable, "-m", "vault", "key", "generate"],
        capture_output=True,
        text=True,
        check=True,
        cwd=sst_real.REPO,
        env={
            **os.environ,
            "HOME": str(sst.root / "home"),
            "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        },
    ).stdout.strip()


def git(cwd: Path, *args: str) -> str:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(cwd.parent / "home"),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        errors="replace",
    ).stdout


def synced(home: Path) -> dict[str, bytes]:
    return {
        k: v
        for k, v in sstfake.list_files(home).items()
        if k.split("/", 1)[0] in sstfake.SYNCED_KINDS
    }


@pytest.fixture
def sst(tmp_path):
    reason = sst_real.missing_reason()
    if reason:
        skip_or_fail(reason)
    project = sst_real.SstProject(tmp_path, sst_real.find_sst_binary(), app=APP)
    (project.project / ".gitignore").write_text(".sst\nnode_modules\n")
    git(project.project, "init", "-q", "-b", "main")
    git(project.project, "config", "user.name", "Test")
    git(project.project, "config", "user.email", "test@example.com")
    git(project.project, "add", "sst.config.ts", ".gitignore")
    git(project.project, "commit", "-q", "-m", "app")
    return project


def test_secrets_and_state_survive_a_round_trip_through_git(sst):
    assert sst.config_dir() == sst.sst_home
    values = {name: f"{name}-{secrets.token_hex(12)}" for name in ("db", "api", "fb", "stg")}
    marker = f"MARKER-{secrets.token_hex(8)}"
    sst.secret_set("DbPassword", values["db"], "prod")
    sst.secret_set("ApiKey", values["api"], "prod")
    sst.secret_set("Shared", values["fb"], "prod", fallback=True)
    sst.secret_set("Other", values["stg"], "staging")
    sstfake.write_state(
        sst.sst_home,
        APP,
        "prod",
        resources=4,
        marker=marker,
        secret_outputs={"DbPassword": values["db"]},
    )
    history = {
        p: p.read_bytes()
        for p in sstfake.write_lock_and_history(sst.sst_home, APP, "prod", locked=True)
    }
    expected = {
        "prod": {
            "fallback": {"Shared": values["fb"]},
            "prod": {"DbPassword": values["db"], "ApiKey": values["api"]},
        },
        "staging": {"fallback": {"Shared": values["fb"]}, "staging": {"Other": values["stg"]}},
    }
    for stage, want in expected.items():
        assert sst.secret_list(stage) == want
    export = sst.state_export("prod")
    decrypted = sst.state_export("prod", decrypt=True)
    [secret_output] = [
        r["outputs"]["value"]
        for r in json.loads(decrypted)["latest"]["resources"]
        if r["type"] == "sst:sst:Secret"
    ]
    assert secret_output["plaintext"] == json.dumps(values["db"])
    before = synced(sst.sst_home)
    needles = [
        *values.values(),
        marker,
        *(v.decode() for k, v in before.items() if k.startswith("passphrase/")),
    ]

    key = generate_key(sst)
    assert key.startswith("AGE-SECRET-KEY-1")
    vault(sst, key, "init", "--no-keyring")
    for name in ("sst-vault.toml", ".gitattributes", ".gitignore", "infra/state/data-key.age"):
        assert (sst.project / name).is_file(), name
    vault(sst, key, "commit", "--all", "-m", "state after deploy")

    state_dir = sst.project / "infra" / "state"
    vault_files = {str(p.relative_to(state_dir)) for p in state_dir.rglob("*.vault")}
    assert vault_files == {
        "app/prod.json.vault",
        "passphrase/prod.json.vault",
        "secret/prod.json.vault",
        "passphrase/staging.json.vault",
        "secret/staging.json.vault",
        "passphrase/_fallback.json.vault",
        "secret/_fallback.json.vault",
    }
    for path, data in history.items():
        assert path.read_bytes() == data, f"{path} is SST's per-machine history"
    head = git(sst.project, "rev-parse", "HEAD")
    assert (
        git(sst.project, "status", "--porcelain", "--", "infra", "sst-vault.toml", ".gitattributes")
        == ""
    )

    # Machine 1 loses its SST home; prepare brings back exactly what SST wrote.
    shutil.rmtree(sst.sst_home / "state")
    vault(sst, key, "prepare", "--all")
    assert synced(sst.sst_home) == before
    for name in before:
        assert stat.S_IMODE((sst.sst_home / "state" / name).stat().st_mode) == 0o600, name
    for path in history:
        assert not path.exists(), f"{path} is per-machine history, never synced"
    for stage, want in expected.items():
        assert sst.secret_list(stage) == want
    assert sst.state_export("prod") == export
    assert sst.state_export("prod", decrypt=True) == decrypted

    # Nothing changed since the commit: no new commit.
    vault(sst, key, "commit", "--all", "-m", "no-op")
    assert git(sst.project, "rev-parse", "HEAD") == head
    # ... and status reports every vault file, each in sync.
    rows = json.loads(vault(sst, key, "status", "--json").stdout)
    assert {(r["stage"], r["kind"]): r["state"] for r in rows} == {
        (name.split("/")[1].removesuffix(".json.vault"), name.split("/")[0]): "in sync"
        for name in vault_files
    }

    # SST changes a secret on machine 1; machine 2 starts from an empty SST home.
    values["api2"] = f"api2-{secrets.token_hex(12)}"
    needles.append(values["api2"])
    sst.secret_set("ApiKey", values["api2"], "prod")
    vault(sst, key, "commit", "prod", "-m", "rotate api key")
    assert git(sst.project, "rev-parse", "HEAD") != head
    machine2 = sst.root / "config2"
    vault(sst, key, "prepare", "--all", home=machine2 / "sst")
    expected["prod"]["prod"]["ApiKey"] = values["api2"]
    for stage, want in expected.items():
        assert sst.secret_list(stage, config_home=machine2) == want
    assert sst.state_export("prod", config_home=machine2) == export

    # No secret, passphrase or state marker in the history or in any git object.
    log = git(sst.project, "log", "-p", "--all", "--binary")
    objects = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch"],
        cwd=sst.project,
        capture_output=True,
        check=True,
    ).stdout
    worktree = b"".join(
        p.read_bytes()
        for p in sst.project.rglob("*")
        if p.is_file() and ".git" not in p.parts and ".sst" not in p.parts
    )
    for needle in needles:
        assert needle not in log, needle
        assert needle.encode() not in objects, needle
        assert needle.encode() not in worktree, needle


# sst-vault's cross-check against the `sst` on PATH: `home_from_sst_binary` runs
# `sst version --verbose` and reads its `config DIR` line (tests/SST_FACTS.md); doctor and
# `status -v` compare that with the SST home sst-vault itself uses.
SST_HINT = "pass --sst-home, or run both with the same HOME/XDG_CONFIG_HOME"


@pytest.fixture
def sst_on_path(sst) -> dict[str, str]:
    """Environment for sst-vault: the real `sst` first on PATH (through a symlink named `sst`)
    and XDG_CONFIG_HOME as in `SstProject.env()`, so SST's home is `sst.sst_home`."""
    bin_dir = sst.root / "bin"
    bin_dir.mkdir()
    (bin_dir / "sst").symlink_to(sst.binary.resolve())
    env = {
        "PATH": os.pathsep.join((str(bin_dir), os.environ.get("PATH", "/usr/bin:/bin"))),
        "XDG_CONFIG_HOME": str(sst.config_home),
    }
    assert shutil.which("sst", path=env["PATH"]) == str(bin_dir / "sst")
    return env


@pytest.fixture
def vault_key(sst) -> str:
    """A vault initialised in the SST project (no `sst` on PATH yet); its key."""
    key = generate_key(sst)
    vault(sst, key, "init", "--no-keyring")
    return key


def doctor_lines(out: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    """Check name -> its whole lines, e.g. {"sst": ["ok    sst: ..."]}."""
    found: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        name = line[4:].strip().split(":", 1)[0]
        found.setdefault(name, []).append(line)
    return found


@pytest.mark.parametrize("how", ["--sst-home", "XDG_CONFIG_HOME", "HOME"])
def test_doctor_agrees_with_the_real_sst_on_its_home(sst, sst_on_path, vault_key, how):
    env = dict(sst_on_path)
    home = sst.sst_home
    if how == "HOME":
        # No XDG_CONFIG_HOME: Go's os.UserConfigDir() falls back to $HOME/.config, as must we.
        del env["XDG_CONFIG_HOME"]
        home = sst.root / "home" / ".config" / "sst"
    out = vault(sst, vault_key, "doctor", env=env, sst_home_flag=how == "--sst-home")
    checks = doctor_lines(out)
    assert checks["sst"] == [f"ok    sst: `sst version --verbose` uses the same home {home}"]
    assert str(home) in checks["SST home"][0]
    assert not [line for line in out.stdout.splitlines() if line.startswith("fail")], out.stdout
    # The real binary ran (any SST run creates <home>/bin), with sst-vault's environment.
    assert (home / "bin").is_dir()


@pytest.mark.parametrize("how", ["--sst-home", "SST_VAULT_SST_HOME"])
def test_doctor_fails_when_the_real_sst_uses_another_home(sst, sst_on_path, vault_key, how):
    other = sst.root / "elsewhere" / "sst"
    env = dict(sst_on_path)
    if how == "SST_VAULT_SST_HOME":
        # sst-vault's own setting, which the SST it runs never sees.
        env["SST_VAULT_SST_HOME"] = str(other)
    out = vault(
        sst, vault_key, "doctor", home=other, env=env, code=1, sst_home_flag=how == "--sst-home"
    )
    checks = doctor_lines(out)
    assert checks["sst"] == [
        f"fail  sst: `sst version --verbose` uses {sst.sst_home}, not {other} ({SST_HINT})"
    ]
    # That is the only failure: the exit code 1 comes from the cross-check.
    fails = [line for line in out.stdout.splitlines() if line.startswith("fail")]
    assert fails == checks["sst"], out.stdout
    assert checks["SST home"][0].startswith(f"warn  SST home: {other} does not exist yet")
    assert not other.exists()


def test_verbose_status_warns_when_the_real_sst_uses_another_home(sst, sst_on_path, vault_key):
    warning = f"Warning: `sst version --verbose` uses {sst.sst_home} as its home"
    same = vault(sst, vault_key, "-v", "status", env=sst_on_path)
    assert f"SST home: {sst.sst_home}" in same.stderr.splitlines()
    assert "Warning" not in same.stderr, same.stderr

    other = sst.root / "elsewhere" / "sst"
    moved = vault(sst, vault_key, "-v", "status", home=other, env=sst_on_path)
    assert f"SST home: {other}" in moved.stderr.splitlines()
    assert warning in moved.stderr.splitlines(), moved.stderr
    # Only with -v: the plain status stays quiet about it.
    plain = vault(sst, vault_key, "status", home=other, env=sst_on_path)
    assert "Warning" not in plain.stderr, plain.stderr


@pytest.mark.parametrize("spelling", ["XDG_CONFIG_HOME with ..", "symlinked --sst-home"])
def test_doctor_accepts_the_same_home_spelled_differently(sst, sst_on_path, vault_key, spelling):
    env = dict(sst_on_path)
    if spelling == "XDG_CONFIG_HOME with ..":
        env["XDG_CONFIG_HOME"] = str(sst.root / "home" / ".." / "config")
        out = vault(sst, vault_key, "doctor", env=env, sst_home_flag=False, code=None)
    else:
        (sst.root / "link").symlink_to(sst.config_home, target_is_directory=True)
        home = sst.root / "link" / "sst"
        out = vault(sst, vault_key, "doctor", home=home, env=env, code=None)
    assert doctor_lines(out)["sst"][0].startswith("ok    sst:"), out.stdout
    assert out.returncode == 0, out.stdout
