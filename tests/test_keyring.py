"""The OS keyring for real: a Secret Service (gnome-keyring) on a private D-Bus session.

A module fixture starts its own `dbus-daemon` (a config with no service directories, so nothing
is ever auto-activated behind our back) and an unlocked `gnome-keyring-daemon --unlock`, whose
default collection is the "login" keyring it creates from the password on stdin. The CLI runs
as a subprocess with `PYTHON_KEYRING_BACKEND=keyring.backends.SecretService.Keyring` and the
private bus address, exactly as a developer's desktop session would give it.

The "no backend" tests need no daemon: they run everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import VaultProject, base_env, new_app_repo, new_key, skip_or_fail
from helpers import deploy, head

pytestmark = pytest.mark.keyring

SECRET_SERVICE = "keyring.backends.SecretService.Keyring"
KEYRING_PASSWORD = "sst-vault-test-login"
READY_TIMEOUT = 20.0

BUS_CONFIG = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>{address}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


@dataclass(frozen=True)
class SecretService:
    address: str  # DBUS_SESSION_BUS_ADDRESS of the private bus
    data_home: Path  # XDG_DATA_HOME of the daemon: keyrings/login.keyring lives there


def _missing_tools() -> list[str]:
    return [t for t in ("dbus-daemon", "gnome-keyring-daemon") if shutil.which(t) is None]


def _wait_for_name(address: str, name: str, procs: list[subprocess.Popen]) -> None:
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection

    deadline = time.monotonic() + READY_TIMEOUT
    with open_dbus_connection(bus=address) as conn:
        while time.monotonic() < deadline:
            if conn.send_and_get_reply(message_bus.NameHasOwner(name)).body[0]:
                return
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not appear on the bus within {READY_TIMEOUT:.0f} s")


@pytest.fixture(scope="module")
def secret_service() -> Iterator[SecretService]:
    missing = _missing_tools()
    if missing:
        skip_or_fail(
            f"{' and '.join(missing)} not installed (Debian: apt-get install dbus gnome-keyring)"
        )
    # A short path: a unix socket path must fit in 108 bytes, pytest's tmp_path may not.
    root = Path(tempfile.mkdtemp(prefix="svkr-"))
    for sub in ("home", "data", "run"):
        (root / sub).mkdir(mode=0o700)
    address = f"unix:path={root}/bus"
    (root / "bus.conf").write_text(BUS_CONFIG.format(address=address))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root / "home"),
        "XDG_DATA_HOME": str(root / "data"),
        "XDG_RUNTIME_DIR": str(root / "run"),
        "DBUS_SESSION_BUS_ADDRESS": address,
    }
    procs: list[subprocess.Popen] = []
    log = (root / "daemons.log").open("wb")
    try:
        procs.append(
            subprocess.Popen(
                ["dbus-daemon", f"--config-file={root / 'bus.conf'}", "--nofork"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while not (root / "bus").exists():
            if procs[0].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dbus-daemon did not start: {_tail(root / 'daemons.log')}")
            time.sleep(0.02)
        # --unlock reads the login password from stdin, creating the "login" collection (the
        # default one) when it does not exist: no prompt, no desktop.
        gkd = subprocess.Popen(
            [
                "gnome-keyring-daemon",
                "--foreground",
                "--unlock",
                "--components=secrets",
                f"--control-directory={root / 'run' / 'keyring'}",
            ],
            env=env,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=log,
        )
        procs.append(gkd)
        assert gkd.stdin is not None
        gkd.stdin.write(KEYRING_PASSWORD.encode())
        gkd.stdin.close()
        try:
            _wait_for_name(address, "org.freedesktop.secrets", procs)
        except RuntimeError as exc:
            pytest.fail(f"gnome-keyring-daemon: {exc}: {_tail(root / 'daemons.log')}")
        yield SecretService(address, root / "data")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _tail(path: Path) -> str:
    return " | ".join(path.read_text(errors="replace").splitlines()[-5:])


# --- helpers ---------------------------------------------------------------------------------


def keyring_env(tmp_path: Path, service: SecretService) -> dict[str, str]:
    """conftest's clean environment, with the real Secret Service instead of the fail backend."""
    env = base_env(tmp_path)
    env.pop("PYTHON_KEYRING_BACKEND", None)
    env.update(PYTHON_KEYRING_BACKEND=SECRET_SERVICE, DBUS_SESSION_BUS_ADDRESS=service.address)
    return env


def no_bus_env(tmp_path: Path) -> dict[str, str]:
    """No keyring configured and no D-Bus session: what a headless CI runner has."""
    env = base_env(tmp_path)
    for name in (
        "PYTHON_KEYRING_BACKEND",
        "DBUS_SESSION_BUS_ADDRESS",
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
    ):
        env.pop(name, None)
    run = tmp_path / "empty-runtime-dir"  # jeepney's fallback bus is $XDG_RUNTIME_DIR/bus
    run.mkdir(mode=0o700, exist_ok=True)
    env["XDG_RUNTIME_DIR"] = str(run)
    return env


def new_repo(tmp_path: Path, env: dict[str, str], name: str = "repo") -> VaultProject:
    """A git repo with sst.config.ts and no vault yet (init is what the tests exercise)."""
    root = new_app_repo(tmp_path / name, env)
    return VaultProject(root, tmp_path / f"{name}-sst-home", env, key="")


def vault_id(project: VaultProject) -> str:
    with (project.root / "sst-vault.toml").open("rb") as f:
        return tomllib.load(f)["vault_id"]


def lookup(env: dict[str, str], vid: str) -> str | None:
    """The keyring entry of a vault, read by another client of the Secret Service."""
    if shutil.which("secret-tool"):
        out = subprocess.run(
            ["secret-tool", "lookup", "service", "sst-vault", "username", f"vault:{vid}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout if out.returncode == 0 and out.stdout else None
    return keyring_entry(env, f"vault:{vid}")


def keyring_entry(env: dict[str, str], username: str) -> str | None:
    """A keyring entry of service sst-vault, read by the keyring library in another process."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, keyring; v = keyring.get_password('sst-vault', sys.argv[1]); "
            "print(v if v is not None else '', end='')",
            username,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout or None


def delete_entry(env: dict[str, str], vid: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, keyring; keyring.delete_password('sst-vault', sys.argv[1])",
            f"vault:{vid}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert lookup(env, vid) is None


# --- with a real Secret Service --------------------------------------------------------------


def test_the_unlocked_login_collection_is_the_default(secret_service):
    """What keyring's Secret Service backend writes to: the "default" alias, unlocked."""
    from jeepney import DBusAddress, Properties, new_method_call
    from jeepney.io.blocking import open_dbus_connection

    service = DBusAddress(
        "/org/freedesktop/secrets",
        bus_name="org.freedesktop.secrets",
        interface="org.freedesktop.Secret.Service",
    )
    with open_dbus_connection(bus=secret_service.address) as conn:
        (path,) = conn.send_and_get_reply(
            new_method_call(service, "ReadAlias", "s", ("default",))
        ).body
        assert path == "/org/freedesktop/secrets/collection/login"
        collection = DBusAddress(
            path, bus_name="org.freedesktop.secrets", interface="org.freedesktop.Secret.Collection"
        )
        locked = conn.send_and_get_reply(Properties(collection).get("Locked")).body[0]
        assert locked == ("b", False)


def test_init_stores_a_new_key_that_commit_and_prepare_read(tmp_path, secret_service):
    env = keyring_env(tmp_path, secret_service)
    project = new_repo(tmp_path, env)

    result = project.cli("init")
    assert result.code == 0, result.output
    assert "keyring" in result.err
    vid = vault_id(project)
    stored = lookup(env, vid)
    assert stored is not None, "init wrote no keyring entry for service sst-vault"
    assert stored.strip().startswith("AGE-SECRET-KEY-1")
    assert stored.strip() not in result.output  # generated into the keyring, never printed
    assert "SST_VAULT_PIN=svid1-" in result.out

    deploy(project, "prod", "keyring-marker", secrets={"ApiKey": "value-keyring-marker"})
    before = project.snapshot_home()
    result = project.cli("commit", "prod")
    assert result.code == 0, result.output
    assert "infra/state/app/prod.json.vault" in project.git("show", "--name-only", "HEAD")

    shutil.rmtree(project.home / "state")  # a fresh checkout on the same machine
    result = project.cli("prepare", "prod")
    assert result.code == 0, result.output
    assert project.snapshot_home() == before

    result = project.cli("status", "prod")
    assert result.code == 0, result.output


def test_two_vaults_use_two_entries_and_never_mix(tmp_path, secret_service):
    env = keyring_env(tmp_path, secret_service)
    one, two = new_repo(tmp_path, env, "one"), new_repo(tmp_path, env, "two")
    for project in (one, two):
        result = project.cli("init")
        assert result.code == 0, result.output
    id_one, id_two = vault_id(one), vault_id(two)
    assert id_one != id_two
    key_one, key_two = lookup(env, id_one), lookup(env, id_two)
    assert key_one and key_two and key_one != key_two

    files = {}
    for project, marker in ((one, "first"), (two, "second")):
        deploy(project, "prod", marker, secrets={"ApiKey": f"value-{marker}"})
        files[marker] = project.snapshot_home()
        result = project.cli("commit", "prod")
        assert result.code == 0, result.output
    for project, marker in ((one, "first"), (two, "second")):
        shutil.rmtree(project.home / "state")
        result = project.cli("prepare", "prod")
        assert result.code == 0, result.output
        assert project.snapshot_home() == files[marker]

    # One vault's key does not open the other: the entries are not interchangeable.
    shutil.rmtree(two.home / "state")
    result = two.cli("prepare", "prod", env=dict(env, SST_VAULT_KEY=key_one.strip()))
    assert result.code == 1, result.output
    assert "wrong key" in result.err
    assert not (two.home / "state").exists()

    # Forgetting one vault's entry leaves the other one working.
    delete_entry(env, id_one)
    assert lookup(env, id_two) == key_two
    result = two.cli("prepare", "prod")
    assert result.code == 0, result.output
    assert two.snapshot_home() == files["second"]


def test_deleted_entry_is_a_clear_configuration_error(tmp_path, secret_service):
    env = keyring_env(tmp_path, secret_service)
    project = new_repo(tmp_path, env)
    assert project.cli("init").code == 0
    deploy(project, "prod", secrets={"ApiKey": "value-"})
    assert project.cli("commit", "prod").code == 0
    delete_entry(env, vault_id(project))

    deploy(project, "prod", "changed", secrets={"ApiKey": "value-changed"})
    home, repo, commit = project.snapshot_home(), project.snapshot_repo(), head(project)
    for args in (("commit", "prod"), ("prepare", "prod", "--force")):
        result = project.cli(*args)
        assert result.code == 2, result.output
        assert "Traceback" not in result.output
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, result.err
        assert "SST_VAULT_KEY" in lines[0] and "key import" in lines[0], lines[0]
        assert "keyring" in lines[0]
    assert project.snapshot_home() == home
    assert project.snapshot_repo() == repo
    assert head(project) == commit


# --- with no keyring backend (no daemon needed) ----------------------------------------------


def _backend_in(env: dict[str, str]) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import keyring; b = keyring.get_keyring(); "
            "print(type(b).__module__ + '.' + type(b).__name__)",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def _no_keyring_envs(tmp_path: Path) -> dict[str, dict[str, str]]:
    envs = {"fail backend": base_env(tmp_path)}  # conftest sets keyring.backends.fail.Keyring
    envs["no D-Bus session"] = no_bus_env(tmp_path)
    envs["Secret Service without a bus"] = dict(
        no_bus_env(tmp_path), PYTHON_KEYRING_BACKEND=SECRET_SERVICE
    )
    return envs


NO_KEYRING_CASES = ["fail backend", "no D-Bus session", "Secret Service without a bus"]


def _no_keyring_env(tmp_path: Path, case: str) -> dict[str, str]:
    """The environment of one no-keyring case; skips where it would find a working backend."""
    env = _no_keyring_envs(tmp_path)[case]
    if case == "no D-Bus session" and _backend_in(env) != "keyring.backends.fail.Keyring":
        pytest.skip(f"a keyring backend works here without D-Bus: {_backend_in(env)}")
    return env


@pytest.mark.parametrize("case", NO_KEYRING_CASES)
def test_no_keyring_backend_init_writes_nothing(tmp_path, case):
    env = _no_keyring_env(tmp_path, case)
    project = new_repo(tmp_path, env)
    commit = head(project)

    result = project.cli("init")
    assert result.code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "SST_VAULT_KEY" in lines[0], lines[0]
    assert "gnome-keyring" in lines[0] and "keyrings.alt" in lines[0], lines[0]
    assert sorted(p.name for p in project.root.iterdir()) == [".git", "sst.config.ts"]
    assert project.git("status", "--porcelain") == ""
    assert head(project) == commit


@pytest.mark.parametrize("case", NO_KEYRING_CASES)
def test_no_keyring_backend_and_no_key_refuses_commit_and_prepare(tmp_path, case):
    env = _no_keyring_env(tmp_path, case)
    project = new_repo(tmp_path, env)
    key = new_key(env)
    result = project.cli("init", "--no-keyring", env=dict(env, SST_VAULT_KEY=key))
    assert result.code == 0, result.output
    deploy(project, "prod", secrets={"ApiKey": "value-"})
    result = project.cli("commit", "prod", env=dict(env, SST_VAULT_KEY=key))
    assert result.code == 0, result.output

    deploy(project, "prod", "changed", secrets={"ApiKey": "value-changed"})
    home, repo, commit = project.snapshot_home(), project.snapshot_repo(), head(project)
    for args in (("commit", "prod"), ("prepare", "prod", "--force")):
        result = project.cli(*args)  # no SST_VAULT_KEY: only the keyring is left, and it fails
        assert result.code == 2, result.output
        assert "Traceback" not in result.output
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, result.err
        assert "SST_VAULT_KEY" in lines[0] and "gnome-keyring" in lines[0], lines[0]
    assert project.snapshot_home() == home
    assert project.snapshot_repo() == repo
    assert head(project) == commit
