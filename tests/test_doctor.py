"""doctor: one ok/warn/fail line per check, a hint for each problem, never a key value."""

from __future__ import annotations

from pathlib import Path

import sstfake
from conftest import VaultProject, base_env, run_cli
from helpers import add_remote, deploy


def lines(result) -> dict[str, list[str]]:
    """Check name -> its lines (without the status), e.g. {"key": ["ok ..."]}."""
    found: dict[str, list[str]] = {}
    for line in result.out.splitlines():
        status, _, rest = line.partition("  ")
        name = rest.strip().split(":")[0]
        found.setdefault(name, []).append(f"{status.strip()} {rest.strip()}")
    return found


def test_doctor_healthy_vault(vault_project: VaultProject, tmp_path: Path) -> None:
    deploy(vault_project, "prod", "m")
    assert vault_project.cli("commit", "prod").code == 0
    add_remote(vault_project, tmp_path)
    result = vault_project.cli("doctor")
    assert result.code == 0, result.output
    checks = lines(result)
    for name in (
        "config",
        "key sources",
        "keyring",
        "key",
        "SST home",
        "git",
        "git attributes",
        "git ignore",
        "diff driver",
        "remote",
        "lock",
        "plaintext",
    ):
        assert name in checks, (name, result.out)
    assert all(line.split()[0] in ("ok", "warn") for line in result.out.splitlines())
    assert checks["key sources"][0].startswith("ok key sources: $SST_VAULT_KEY (1 key)")
    assert checks["key"][0].startswith("ok key: $SST_VAULT_KEY opens the vault (key id svk1-")
    assert "keyring.backends.fail.Keyring" in checks["keyring"][0]
    assert checks["git attributes"][0] == "ok git attributes: *.vault: -text -merge diff=sst-vault"
    assert checks["diff driver"][0].startswith("ok diff driver: textconv = ")
    assert checks["lock"] == ["ok lock: prod: free"]
    assert str(vault_project.home) in checks["SST home"][0]
    # The secret itself never appears, nor anything derived from it but the key id.
    assert vault_project.key not in result.output
    assert vault_project.key.split("1", 1)[1][:20] not in result.output


def test_doctor_fails_without_a_key(vault_project: VaultProject) -> None:
    env = dict(vault_project.env)
    env.pop("SST_VAULT_KEY")
    result = vault_project.cli("doctor", env=env)
    assert result.code == 1
    assert "Traceback" not in result.output
    checks = lines(result)
    assert checks["keyring"][0].startswith("fail keyring: no usable backend")
    assert "SST_VAULT_KEY" in checks["keyring"][0]
    assert checks["key"][0].startswith("fail key: ")
    # The rest is still checked.
    assert checks["diff driver"][0].startswith("ok")


def test_doctor_names_a_key_file_and_a_wrong_key(
    vault_project: VaultProject, tmp_path: Path
) -> None:
    key_file = tmp_path / "ci.key"
    key_file.write_text(vault_project.key + "\n")
    env = {k: v for k, v in vault_project.env.items() if k != "SST_VAULT_KEY"}
    env["SST_VAULT_KEY_FILE"] = str(key_file)
    result = vault_project.cli("doctor", env=env)
    assert result.code == 0, result.output
    assert f"$SST_VAULT_KEY_FILE={key_file}" in result.out
    assert vault_project.key not in result.output
    other = run_cli("key", "generate", cwd=tmp_path, env=base_env(tmp_path)).out.strip()
    wrong = vault_project.cli("doctor", env={**env, "SST_VAULT_KEY": other})
    assert wrong.code == 1
    assert lines(wrong)["key"][0].startswith("fail key: ")
    assert "wrong key" in lines(wrong)["key"][0]
    assert other not in wrong.output


def test_doctor_warns_on_missing_driver_and_masks_remote_credentials(
    vault_project: VaultProject,
) -> None:
    vault_project.git("config", "--unset", "diff.sst-vault.textconv")
    vault_project.git("remote", "add", "origin", "https://user:hunter2-token@example.com/r.git")
    result = vault_project.cli("doctor")
    assert result.code == 0, result.output
    checks = lines(result)
    assert checks["diff driver"][0].startswith("warn diff driver: not registered")
    assert "sst-vault setup-git" in checks["diff driver"][0]
    assert "hunter2" not in result.output
    assert checks["remote"][0] == "ok remote: origin https://***@example.com/r.git"
    # A driver whose program is gone would make `git diff` fail: that is a fail.
    vault_project.git("config", "diff.sst-vault.textconv", "/nonexistent/sst-vault textconv")
    broken = vault_project.cli("doctor")
    assert broken.code == 1
    assert lines(broken)["diff driver"][0].startswith("fail diff driver:")


def test_doctor_fails_on_plaintext_and_missing_attributes(vault_project: VaultProject) -> None:
    sstfake.write_state(vault_project.home, vault_project.app, "prod")
    leak = vault_project.root / "infra" / "state" / "app" / "prod.json.bak"
    leak.parent.mkdir(parents=True, exist_ok=True)
    leak.write_bytes(vault_project.state_file("app", "prod").read_bytes())
    (vault_project.root / ".gitattributes").write_text("")
    result = vault_project.cli("doctor")
    assert result.code == 1
    checks = lines(result)
    assert checks["plaintext"][0].startswith(
        "fail plaintext: 1 plaintext file(s): infra/state/app/prod.json.bak"
    )
    assert checks["git attributes"][0].startswith("fail git attributes:")


def test_doctor_outside_a_project(tmp_path: Path, env: dict[str, str]) -> None:
    result = run_cli("doctor", cwd=tmp_path, env=env)
    assert result.code == 1
    assert result.out.splitlines()[0].startswith("fail  config: no sst-vault.toml")
    assert "sst-vault init" in result.out
    assert "Traceback" not in result.output
