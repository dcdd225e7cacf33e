"""A stand-in for the SST CLI: writes `<sst-home>/state/...` files byte-for-byte as SST does.

Everything here follows tests/SST_FACTS.md (observed with the real `sst` 4.17.1 binary and read
in sst's `pkg/project/provider/{local,provider}.go`). In short:

- `<home>/state/<kind>/<app>/<stage>.json`, directories 0755 and files 0666, both minus the
  umask (Go's `os.MkdirAll(dir, 0755)` and `os.Create`), written in place (no temp file).
- `passphrase`: base64 (standard, padded) of 32 random bytes, no trailing newline.
- `secret`: 12-byte nonce, then AES-256-GCM (key: the decoded passphrase, no AAD) of Go's
  `json.Marshal(map[string]string)` (sorted keys, compact, HTML characters escaped).
- fallback secrets (`sst secret set --fallback`) use the stage name `_fallback`, with a
  passphrase file of their own; SST never writes an `app` file for `_fallback`.
- `app`: the Pulumi checkpoint exactly as the bundled Pulumi 3.215 writes it (4-space indent,
  no HTML escaping, trailing newline).
- `lock/<app>/<stage>.json`, `update|snapshot|eventlog/<app>/<stage>/<updateID>.json`: the
  per-machine history written during `sst deploy`.

No pytest import here: the module is also useful from benchmarks and from a Python prompt.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import random
import re
import secrets as _secrets
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: The kinds sst-vault syncs, and the per-machine ones it must never touch.
SYNCED_KINDS = ("app", "passphrase", "secret")
HISTORY_KINDS = ("lock", "update", "snapshot", "eventlog")
#: The stage name SST uses for `--fallback` secrets (not a valid user stage: `_` is refused).
FALLBACK_STAGE = "_fallback"
#: SST's `InvalidStageRegex` (pkg/project/project.go); any match makes a stage invalid.
INVALID_STAGE_RE = re.compile(r"[^a-zA-Z0-9-]")
#: The Pulumi version bundled with sst 4.17.1 (`sst version --verbose`).
PULUMI_VERSION = "v3.215.0"
NONCE_SIZE = 12
KEY_SIZE = 32

# Pulumi's marker for a secret property value in a checkpoint.
_PULUMI_SIG_KEY = "4dabf18193072939515e22adb298388d"
_PULUMI_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
_PULUMI_PBKDF2_ROUNDS = 1_000_000


def is_valid_stage(stage: str) -> bool:
    """True when the real SST accepts `stage` for `--stage` (it also accepts `1abc` and `-x`)."""
    return bool(stage) and not INVALID_STAGE_RE.search(stage)


def state_path(home: Path, kind: str, app: str, stage: str) -> Path:
    """`<home>/state/<kind>/<app>/<stage>.json`, SST's `LocalHome.pathForData`."""
    return Path(home) / "state" / kind / app / f"{stage}.json"


def _secret_stage(stage: str | None) -> str:
    # provider.GetSecrets/PutSecrets map the empty stage to "_fallback".
    return stage or FALLBACK_STAGE


def put_data(home: Path, kind: str, app: str, stage: str, data: bytes) -> Path:
    """Write one file as `LocalHome.putData` does: MkdirAll 0755, then create/truncate 0666."""
    path = state_path(home, kind, app, stage)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def go_json(value: Any) -> bytes:
    """Go's `json.Marshal` for maps of strings: sorted keys, compact, HTML-safe escapes."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(ch, esc)
    return text.encode()


# --- passphrase -------------------------------------------------------------------------------


def write_passphrase(home: Path, app: str, stage: str, key: bytes | None = None) -> bytes:
    """Write a passphrase file (a new random one unless `key` is given); returns the raw key."""
    key = _secrets.token_bytes(KEY_SIZE) if key is None else key
    if len(key) != KEY_SIZE:
        raise ValueError(f"an SST passphrase is {KEY_SIZE} bytes, got {len(key)}")
    put_data(home, "passphrase", app, stage, base64.b64encode(key))
    return key


def read_passphrase(home: Path, app: str, stage: str) -> bytes | None:
    """The raw 32-byte key of a stage, or None when SST has not created one yet."""
    path = state_path(home, "passphrase", app, stage)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    return base64.b64decode(text, validate=True)


def ensure_passphrase(home: Path, app: str, stage: str) -> bytes:
    """SST's `GetOrCreatePassphrase`: reuse the stage's passphrase, or create it."""
    key = read_passphrase(home, app, stage)
    return key if key is not None else write_passphrase(home, app, stage)


# --- secrets (`sst secret set`) ----------------------------------------------------------------


def encrypt_secrets(key: bytes, values: dict[str, str], nonce: bytes | None = None) -> bytes:
    """The bytes of a `secret` file: nonce || AES-256-GCM(key, json) with no AAD."""
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    return nonce + AESGCM(key).encrypt(nonce, go_json(values), None)


def decrypt_secrets(key: bytes, data: bytes) -> dict[str, str]:
    """Open the bytes of a `secret` file (raises cryptography's InvalidTag on a wrong key)."""
    plain = AESGCM(key).decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], None)
    return json.loads(plain)


def write_secrets(home: Path, app: str, stage: str | None, values: dict[str, str]) -> Path:
    """Replace the stage's secrets with `values`, as `sst secret set` leaves them.

    `stage` None or "" means the fallback secrets (`_fallback`). The passphrase is created
    first when missing, exactly like SST; no `app` file is written.
    """
    stage = _secret_stage(stage)
    key = ensure_passphrase(home, app, stage)
    return put_data(home, "secret", app, stage, encrypt_secrets(key, values))


def read_secrets(home: Path, app: str, stage: str | None) -> dict[str, str]:
    """Decrypt a stage's secrets; {} when there is no secret file (as `sst secret list`)."""
    stage = _secret_stage(stage)
    path = state_path(home, "secret", app, stage)
    if not path.exists():
        return {}
    key = read_passphrase(home, app, stage)
    if key is None:
        raise FileNotFoundError(f"{path} exists but its passphrase file does not")
    return decrypt_secrets(key, path.read_bytes())


# --- Pulumi secrets inside the checkpoint ------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _pulumi_key(passphrase: str, salt: bytes) -> bytes:
    # Pulumi's NewSymmetricCrypterFromPassphrase; about 0.4 s, hence the cache.
    return hashlib.pbkdf2_hmac("sha256", passphrase.encode(), salt, _PULUMI_PBKDF2_ROUNDS, 32)


def _pulumi_encrypt(key: bytes, plaintext: str) -> str:
    nonce = os.urandom(NONCE_SIZE)
    ct = AESGCM(key).encrypt(nonce, plaintext.encode(), None)
    return f"v1:{base64.b64encode(nonce).decode()}:{base64.b64encode(ct).decode()}"


def pulumi_decrypt(passphrase: str, salt_state: str, ciphertext: str) -> str:
    """Decrypt one Pulumi secret value (for tests that look inside a checkpoint)."""
    salt = base64.b64decode(salt_state.split(":")[1])
    _, nonce, ct = ciphertext.split(":")
    key = _pulumi_key(passphrase, salt)
    return AESGCM(key).decrypt(base64.b64decode(nonce), base64.b64decode(ct), None).decode()


@functools.lru_cache(maxsize=64)
def _salt_state(passphrase: str) -> tuple[str, bytes]:
    # One salt per passphrase, as a Pulumi stack keeps its salt across deploys.
    salt = os.urandom(8)
    key = _pulumi_key(passphrase, salt)
    return f"v1:{base64.b64encode(salt).decode()}:{_pulumi_encrypt(key, 'pulumi')}", key


# --- app state (the Pulumi checkpoint) ---------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _resource_group(
    rng: random.Random,
    app: str,
    stage: str,
    i: int,
    provider: str,
) -> list[dict[str, Any]]:
    """A component and the AWS resource under it, shaped like an SST v3 deploy."""
    base = f"urn:pulumi:{stage}::{app}::"
    stack_urn = f"{base}pulumi:pulumi:Stack::{app}-{stage}"
    suffix = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
    account = "123456789012"
    now = _now()
    if i % 2 == 0:
        name = f"Bucket{i}"
        comp = f"{base}sst:aws:Bucket::{name}"
        bucket = f"{app}-{stage}-{name.lower()}-{suffix}"
        child = {
            "urn": f"{base}sst:aws:Bucket$aws:s3/bucketV2:BucketV2::{name}Bucket",
            "custom": True,
            "id": bucket,
            "type": "aws:s3/bucketV2:BucketV2",
            "inputs": {
                "__defaults": [],
                "bucket": bucket,
                "forceDestroy": True,
                "tags": {"sst:app": app, "sst:stage": stage},
            },
            "outputs": {
                "arn": f"arn:aws:s3:::{bucket}",
                "bucket": bucket,
                "bucketDomainName": f"{bucket}.s3.amazonaws.com",
                "bucketRegionalDomainName": f"{bucket}.s3.us-east-1.amazonaws.com",
                "hostedZoneId": "Z3AQBSTGFYJSTF",
                "id": bucket,
                "objectLockEnabled": False,
                "region": "us-east-1",
                "requestPayer": "BucketOwner",
                "tags": {"sst:app": app, "sst:stage": stage},
                "tagsAll": {"sst:app": app, "sst:stage": stage},
                "serverSideEncryptionConfigurations": [
                    {
                        "rules": [
                            {
                                "applyServerSideEncryptionByDefaults": [
                                    {"kmsMasterKeyId": "", "sseAlgorithm": "AES256"}
                                ],
                                "bucketKeyEnabled": False,
                            }
                        ]
                    }
                ],
                "versionings": [{"enabled": False, "mfaDelete": False}],
            },
            "parent": comp,
            "provider": provider,
            "propertyDependencies": {"bucket": [], "forceDestroy": []},
            "created": now,
            "modified": now,
        }
    else:
        name = f"Function{i}"
        comp = f"{base}sst:aws:Function::{name}"
        fn = f"{app}-{stage}-{name}Function-{suffix}"
        role = f"arn:aws:iam::{account}:role/{app}-{stage}-{name}Role-{suffix}"
        child = {
            "urn": f"{base}sst:aws:Function$aws:lambda/function:Function::{name}Function",
            "custom": True,
            "id": fn,
            "type": "aws:lambda/function:Function",
            "inputs": {
                "__defaults": [],
                "architectures": ["x86_64"],
                "handler": "index.handler",
                "memorySize": 1024,
                "role": role,
                "runtime": "nodejs20.x",
                "timeout": 20,
                "environment": {
                    "variables": {"SST_RESOURCE_App": json.dumps({"name": app, "stage": stage})}
                },
            },
            "outputs": {
                "arn": f"arn:aws:lambda:us-east-1:{account}:function:{fn}",
                "codeSha256": base64.b64encode(rng.randbytes(32)).decode(),
                "functionName": fn,
                "handler": "index.handler",
                "invokeArn": (
                    "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/"
                    f"arn:aws:lambda:us-east-1:{account}:function:{fn}/invocations"
                ),
                "lastModified": now,
                "memorySize": 1024,
                "role": role,
                "runtime": "nodejs20.x",
                "sourceCodeHash": rng.randbytes(16).hex(),
                "timeout": 20,
                "version": "$LATEST",
                "loggingConfig": {"logFormat": "Text", "logGroup": f"/aws/lambda/{fn}"},
            },
            "parent": comp,
            "provider": provider,
            "created": now,
            "modified": now,
        }
    component = {
        "urn": comp,
        "custom": False,
        "type": comp.split("::")[2],
        "parent": stack_urn,
        "created": now,
        "modified": now,
    }
    return [component, child]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def make_checkpoint(
    app: str,
    stage: str,
    resources: int = 3,
    marker: str = "",
    size: int | None = None,
    secret_outputs: dict[str, str] | None = None,
    passphrase: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """A Pulumi `VersionedCheckpoint` (version 3) as SST's `app` file holds it.

    `resources` counts the resource groups (a component and its AWS resource) beyond the stack
    and provider; `size` keeps adding groups until the serialized file is about that many bytes.
    `secret_outputs` adds one `sst:sst:Secret` resource per item whose `value` is a Pulumi secret
    encrypted under `passphrase` (the base64 text of the passphrase file), so that
    `sst state export --decrypt` can open it; without it the salt is still a valid one.
    """
    rng = random.Random(seed)
    passphrase = passphrase or base64.b64encode(os.urandom(KEY_SIZE)).decode()
    salt_state, pkey = _salt_state(passphrase)
    base = f"urn:pulumi:{stage}::{app}::"
    stack_urn = f"{base}pulumi:pulumi:Stack::{app}-{stage}"
    now = _now()
    provider_id = _uuid(rng)
    provider_ref = f"{base}pulumi:providers:aws::default_6_66_2::{provider_id}"
    stack_outputs: dict[str, Any] = {"app": app, "stage": stage}
    if marker:
        stack_outputs["marker"] = marker
    res: list[dict[str, Any]] = [
        {
            "urn": stack_urn,
            "custom": False,
            "type": "pulumi:pulumi:Stack",
            "outputs": stack_outputs,
            "created": now,
            "modified": now,
        },
        {
            "urn": f"{base}pulumi:providers:aws::default_6_66_2",
            "custom": True,
            "id": provider_id,
            "type": "pulumi:providers:aws",
            "inputs": {
                "__internal": {"pluginDownloadURL": ""},
                "region": "us-east-1",
                "skipCredentialsValidation": "false",
                "skipRegionValidation": "true",
                "version": "6.66.2",
            },
            "outputs": {
                "region": "us-east-1",
                "skipCredentialsValidation": "false",
                "skipRegionValidation": "true",
                "version": "6.66.2",
            },
            "created": now,
            "modified": now,
        },
    ]
    for name, value in (secret_outputs or {}).items():
        res.append(
            {
                "urn": f"{base}sst:sst:Secret::{name}",
                "custom": False,
                "type": "sst:sst:Secret",
                "outputs": {
                    "name": name,
                    "value": {
                        _PULUMI_SIG_KEY: _PULUMI_SECRET_SIG,
                        "ciphertext": _pulumi_encrypt(pkey, go_json(value).decode()),
                    },
                },
                "parent": stack_urn,
                "created": now,
                "modified": now,
            }
        )

    def wrap() -> dict[str, Any]:
        return {
            "version": 3,
            "checkpoint": {
                "stack": f"organization/{app}/{stage}",
                "latest": {
                    "manifest": {
                        "time": now,
                        "magic": hashlib.sha256(PULUMI_VERSION.encode()).hexdigest(),
                        "version": PULUMI_VERSION,
                    },
                    "secrets_providers": {"type": "passphrase", "state": {"salt": salt_state}},
                    "resources": res,
                    "metadata": {},
                },
            },
        }

    for i in range(resources):
        res.extend(_resource_group(rng, app, stage, i, provider_ref))
    if size:
        # Resources sit 4 levels deep: each of their lines carries 16 more spaces of indent.
        total = len(dump_checkpoint(wrap()))
        i = resources
        while total < size:
            group = _resource_group(rng, app, stage, i, provider_ref)
            for r in group:
                text = json.dumps(r, indent=4, ensure_ascii=False)
                total += len(text.encode()) + 16 * (text.count("\n") + 1) + 2
            res.extend(group)
            i += 1
    return wrap()


def dump_checkpoint(checkpoint: dict[str, Any]) -> bytes:
    """Pulumi 3.215's `encoding.JSON`: 4-space indent, no HTML escaping, trailing newline."""
    return (json.dumps(checkpoint, indent=4, ensure_ascii=False) + "\n").encode()


def write_state(
    home: Path,
    app: str,
    stage: str,
    resources: int = 3,
    marker: str = "",
    size: int | None = None,
    secret_outputs: dict[str, str] | None = None,
    seed: int | None = None,
) -> Path:
    """Write the `app` checkpoint of a stage as a deploy leaves it (see `make_checkpoint`).

    The stage's passphrase is created when missing (a deploy always has one), and the
    checkpoint's secrets salt is derived from it, as Pulumi does.
    """
    key = ensure_passphrase(home, app, stage)
    checkpoint = make_checkpoint(
        app, stage, resources, marker, size, secret_outputs, base64.b64encode(key).decode(), seed
    )
    return put_data(home, "app", app, stage, dump_checkpoint(checkpoint))


def read_state(home: Path, app: str, stage: str) -> dict[str, Any]:
    return json.loads(state_path(home, "app", app, stage).read_bytes())


# --- per-machine history -----------------------------------------------------------------------


def update_id(descending: bool = True, now_ms: int | None = None) -> str:
    """SST's `id.Descending()`: 12 hex digits of (inverted) unix ms, then 12 random hex digits."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if descending:
        now = ~now
    ts = (now & (2**48 - 1)).to_bytes(6, "big")
    return ts.hex() + os.urandom(6).hex()


def write_lock_and_history(
    home: Path,
    app: str,
    stage: str,
    command: str = "deploy",
    locked: bool = True,
) -> list[Path]:
    """Write what a deploy leaves besides `app`: lock, update, snapshot and eventlog files.

    `locked=False` leaves no lock file (a deploy that finished unlocks); True is a deploy that is
    running or crashed. Returns the paths written. The snapshot copies the current `app` file
    when there is one.
    """
    uid = update_id()
    started = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    written: list[Path] = []
    if locked:
        lock = {"created": _now(), "updateID": uid, "runID": "", "command": command, "ignore": True}
        written.append(
            put_data(home, "lock", app, stage, json.dumps(lock, separators=(",", ":")).encode())
        )
    update = {
        "id": uid,
        "version": "4.17.1",
        "command": command,
        "errors": None,
        "timeStarted": started,
    }
    if not locked:
        update["timeCompleted"] = started
    written.append(
        put_data(
            home,
            "update",
            app,
            f"{stage}/{uid}",
            json.dumps(update, separators=(",", ":")).encode(),
        )
    )
    app_file = state_path(home, "app", app, stage)
    snapshot = (
        app_file.read_bytes()
        if app_file.exists()
        else dump_checkpoint(make_checkpoint(app, stage, resources=1))
    )
    written.append(put_data(home, "snapshot", app, f"{stage}/{uid}", snapshot))
    event = {
        "sequence": 0,
        "timestamp": int(time.time()),
        "cancelEvent": None,
        "summaryEvent": {"maybeCorrupt": False, "durationSeconds": 3},
    }
    written.append(
        put_data(
            home,
            "eventlog",
            app,
            f"{stage}/{uid}",
            (json.dumps(event, separators=(",", ":")) + "\n").encode(),
        )
    )
    return written


def list_files(home: Path) -> dict[str, bytes]:
    """Every file under `<home>/state`, keyed by relative path (for before/after compares)."""
    root = Path(home) / "state"
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }
