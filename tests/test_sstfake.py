"""The SST stand-in writes what SST writes: checked against captured vectors and, where the real
CLI is installed, against the real `sst` binary both ways."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
import sst_real
import sstfake
from conftest import skip_or_fail

APP = "vaulttest"

# Captured from sst 4.17.1: `sst secret set Z 'x<y>&z é "q" \ tab<TAB>end'` then `secret set A a`.
REAL_PASSPHRASE = b"7y5QsMXZCWJPhmg2cfcrJLiaPNuRJEM7dZr/oMvpiIo="
REAL_SECRET = bytes.fromhex(
    "5e4c4c372e12e08b1f8156d7dc99633c97a522ea891ffbb06ee666a5b4548d5d346e9f0132acf9588eebaaad"
    "7b22b9d646d9b5efea33e6d9c884ae6ac33a58db0ccf5f4247a176507b39a8b1ec86197eba3af979ed2e"
)
REAL_VALUES = {"A": "a", "Z": 'x<y>&z é "q" \\ tab\tend'}
REAL_PLAINTEXT = b'{"A":"a","Z":"x\\u003cy\\u003e\\u0026z \xc3\xa9 \\"q\\" \\\\ tab\\tend"}'


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_captured_sst_secret_file_opens():
    key = base64.b64decode(REAL_PASSPHRASE)
    assert sstfake.decrypt_secrets(key, REAL_SECRET) == REAL_VALUES
    nonce = REAL_SECRET[: sstfake.NONCE_SIZE]
    assert sstfake.encrypt_secrets(key, REAL_VALUES, nonce) == REAL_SECRET
    assert sstfake.go_json(REAL_VALUES) == REAL_PLAINTEXT


def test_layout_and_modes(tmp_path, umask_022):
    key = sstfake.write_passphrase(tmp_path, APP, "prod")
    p = sstfake.state_path(tmp_path, "passphrase", APP, "prod")
    assert p == tmp_path / "state" / "passphrase" / APP / "prod.json"
    assert len(key) == 32
    raw = p.read_bytes()
    assert len(raw) == 44 and not raw.endswith(b"\n")
    assert base64.b64decode(raw) == key
    assert mode(p) == 0o644
    assert mode(p.parent) == mode(p.parent.parent) == mode(tmp_path / "state") == 0o755


def test_secrets_roundtrip_and_fallback(tmp_path):
    sstfake.write_secrets(tmp_path, APP, "prod", {"B": "2", "A": "1"})
    sstfake.write_secrets(tmp_path, APP, None, {"F": "fb"})
    assert sstfake.read_secrets(tmp_path, APP, "prod") == {"A": "1", "B": "2"}
    assert sstfake.read_secrets(tmp_path, APP, "") == {"F": "fb"}
    assert sstfake.read_secrets(tmp_path, APP, "other") == {}
    files = set(sstfake.list_files(tmp_path))
    assert files == {
        f"{k}/{APP}/{s}.json" for k in ("passphrase", "secret") for s in ("prod", "_fallback")
    }  # no `app` file, as `sst secret set`
    data = sstfake.state_path(tmp_path, "secret", APP, "prod").read_bytes()
    assert len(data) == 12 + len(b'{"A":"1","B":"2"}') + 16


def test_secrets_reuse_passphrase(tmp_path):
    key = sstfake.write_passphrase(tmp_path, APP, "prod")
    sstfake.write_secrets(tmp_path, APP, "prod", {"A": "1"})
    assert sstfake.read_passphrase(tmp_path, APP, "prod") == key


def test_state_shape_marker_and_size(tmp_path):
    p = sstfake.write_state(tmp_path, APP, "prod", resources=2, marker="MARKER-42")
    raw = p.read_bytes()
    assert raw.endswith(b"}\n") and raw.startswith(b'{\n    "version": 3,')
    doc = json.loads(raw)
    latest = doc["checkpoint"]["latest"]
    assert doc["checkpoint"]["stack"] == f"organization/{APP}/prod"
    assert latest["secrets_providers"]["type"] == "passphrase"
    assert len(latest["resources"]) == 2 + 2 * 2
    assert b"MARKER-42" in raw
    big = sstfake.write_state(tmp_path, APP, "big", size=300_000)
    assert 300_000 <= big.stat().st_size < 310_000


def test_state_secret_outputs_use_the_passphrase(tmp_path):
    p = sstfake.write_state(tmp_path, APP, "prod", secret_outputs={"Db": "hunter2"})
    assert b"hunter2" not in p.read_bytes()
    latest = sstfake.read_state(tmp_path, APP, "prod")["checkpoint"]["latest"]
    salt = latest["secrets_providers"]["state"]["salt"]
    [secret] = [r for r in latest["resources"] if r["type"] == "sst:sst:Secret"]
    phrase = sstfake.state_path(tmp_path, "passphrase", APP, "prod").read_text()
    ct = secret["outputs"]["value"]["ciphertext"]
    assert sstfake.pulumi_decrypt(phrase, salt, ct) == '"hunter2"'


def test_lock_and_history_layout(tmp_path):
    sstfake.write_state(tmp_path, APP, "prod")
    paths = sstfake.write_lock_and_history(tmp_path, APP, "prod")
    rel = sorted(str(p.relative_to(tmp_path / "state")) for p in paths)
    assert rel[0].startswith(f"eventlog/{APP}/prod/")
    assert rel[1] == f"lock/{APP}/prod.json"
    uid = Path(rel[2]).stem
    assert len(uid) == 24 and int(uid, 16) >= 0
    assert rel[2:] == [f"snapshot/{APP}/prod/{uid}.json", f"update/{APP}/prod/{uid}.json"]
    assert json.loads(paths[0].read_text())["updateID"] == uid


@pytest.mark.parametrize(
    "stage,ok",
    [
        ("prod", True),
        ("my-stage", True),
        ("UPPER", True),
        ("1abc", True),
        ("My_Stage", False),
        ("a.b", False),
        ("a/b", False),
        ("", False),
        ("_fallback", False),
    ],
)
def test_stage_rule(stage, ok):
    assert sstfake.is_valid_stage(stage) is ok


# --- against the real SST CLI -------------------------------------------------------------------


@pytest.fixture
def sst(tmp_path):
    reason = sst_real.missing_reason()
    if reason:
        skip_or_fail(reason)
    return sst_real.SstProject(tmp_path, sst_real.find_sst_binary(), app=APP)


@pytest.mark.real_sst
def test_real_sst_reads_fake_secrets(sst):
    sstfake.write_secrets(sst.sst_home, APP, "prod", {"Api": "k<1>&2", "Db": 'p"w'})
    sstfake.write_secrets(sst.sst_home, APP, None, {"Shared": "fb"})
    assert sst.secret_list("prod") == {
        "fallback": {"Shared": "fb"},
        "prod": {"Api": "k<1>&2", "Db": 'p"w'},
    }


@pytest.mark.real_sst
def test_fake_reads_real_sst_secrets(sst, umask_022):
    assert sst.config_dir() == sst.sst_home
    sst.secret_set("Db", "pw-1", "prod")
    sst.secret_set("Api", "k=v", "prod")
    sst.secret_set("Shared", "fb", "prod", fallback=True)
    assert sstfake.read_secrets(sst.sst_home, APP, "prod") == {"Api": "k=v", "Db": "pw-1"}
    assert sstfake.read_secrets(sst.sst_home, APP, None) == {"Shared": "fb"}
    files = sstfake.list_files(sst.sst_home)
    assert set(files) == {
        f"{k}/{APP}/{s}.json" for k in ("passphrase", "secret") for s in ("prod", "_fallback")
    }
    for name in files:
        path = sst.sst_home / "state" / name
        assert mode(path) == 0o644 and mode(path.parent) == 0o755
    assert len(files[f"passphrase/{APP}/prod.json"]) == 44


@pytest.mark.real_sst
def test_real_sst_exports_fake_state(sst):
    sstfake.write_state(sst.sst_home, APP, "prod", resources=2, secret_outputs={"Db": "hunter2"})
    exported = json.loads(sst.state_export("prod"))
    want = sstfake.read_state(sst.sst_home, APP, "prod")["checkpoint"]
    assert exported["stack"] == want["stack"]
    assert [r["urn"] for r in exported["latest"]["resources"]] == [
        r["urn"] for r in want["latest"]["resources"]
    ]
    assert "hunter2" not in json.dumps(exported)
    assert '\\"hunter2\\"' in sst.state_export("prod", decrypt=True)
    # A foreign passphrase no longer opens the checkpoint's secrets.
    sstfake.write_passphrase(sst.sst_home, APP, "prod")
    assert sst.run("state", "export", "--decrypt", "--stage", "prod", check=False).returncode
