"""A Pulumi checkpoint of any size, shaped and compressible like a real SST v3 `app` state.

Real checkpoints are mostly repeated keys and URNs, with a share of near-random text (ids,
ARNs with random suffixes, code hashes, ETags, encrypted secret outputs): zlib takes them to
about 0.15-0.2 of their size. This generator mixes the same ingredients (the bench prints the
ratio it got), so compression, git and the ciphers see realistic input. Standard library only.
"""

from __future__ import annotations

import base64
import json
import random
import re
import uuid
from typing import Any

_WORDS = (
    "api web site auth users orders billing search media images uploads events queue worker "
    "cron mailer notify invoices reports admin dashboard assets static cache sessions tokens "
    "payments checkout catalog inventory shipping profile avatar export import sync webhook "
    "stream analytics metrics logs audit backup archive thumbnails video audio docs help"
)
WORDS = tuple(_WORDS.split())
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1")
RUNTIMES = ("nodejs20.x", "nodejs22.x", "python3.12", "provided.al2023")
ACCOUNT = "123456789012"
TIME_PLACEHOLDER = "2026-01-01T00:00:00.000000000Z"  # the manifest time; variants rewrite it


def _suffix(rng: random.Random, n: int = 8) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(n))


def _time(rng: random.Random) -> str:
    return (
        f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
        f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999999):06d}Z"
    )


def _b64(rng: random.Random, n: int) -> str:
    return base64.b64encode(rng.randbytes(n)).decode()


def _policy(rng: random.Random, arns: list[str]) -> str:
    """IAM policies sit in the state as JSON strings, escaped once more."""
    actions = rng.sample(
        [
            "s3:GetObject",
            "s3:PutObject",
            "s3:DeleteObject",
            "s3:ListBucket",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:Query",
            "sqs:SendMessage",
            "sqs:ReceiveMessage",
            "logs:PutLogEvents",
            "logs:CreateLogStream",
            "ssm:GetParameter",
            "kms:Decrypt",
        ],
        4,
    )
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": arns}],
        }
    )


def _group(
    rng: random.Random, app: str, stage: str, i: int, provider: str, stack_urn: str
) -> list[dict[str, Any]]:
    base = f"urn:pulumi:{stage}::{app}::"
    region = rng.choice(REGIONS)
    word = rng.choice(WORDS)
    name = f"{word.title()}{i}"
    created, modified = _time(rng), _time(rng)
    kind = i % 4
    if kind == 0:
        comp_type, child_type = "sst:aws:Bucket", "aws:s3/bucketV2:BucketV2"
        ident = f"{app}-{stage}-{word}{i}-{_suffix(rng)}"
        inputs = {
            "__defaults": [],
            "bucket": ident,
            "forceDestroy": True,
            "tags": {"sst:app": app, "sst:stage": stage},
        }
        outputs = {
            "arn": f"arn:aws:s3:::{ident}",
            "bucket": ident,
            "bucketDomainName": f"{ident}.s3.amazonaws.com",
            "bucketRegionalDomainName": f"{ident}.s3.{region}.amazonaws.com",
            "hostedZoneId": "Z3AQBSTGFYJSTF",
            "id": ident,
            "region": region,
            "tags": {"sst:app": app, "sst:stage": stage},
            "versionings": [{"enabled": rng.random() < 0.3, "mfaDelete": False}],
        }
    elif kind == 1:
        comp_type, child_type = "sst:aws:Function", "aws:lambda/function:Function"
        ident = f"{app}-{stage}-{name}Function-{_suffix(rng)}"
        role = f"arn:aws:iam::{ACCOUNT}:role/{app}-{stage}-{name}Role-{_suffix(rng)}"
        env = {
            f"SST_RESOURCE_{w.title()}{rng.randint(0, 99)}": json.dumps(
                {"name": f"{app}-{stage}-{w}-{_suffix(rng, 6)}", "type": "sst.aws.Bucket"}
            )
            for w in rng.sample(WORDS, 3)
        }
        inputs = {
            "__defaults": [],
            "architectures": ["arm64"],
            "handler": "bundle.handler",
            "memorySize": rng.choice((128, 512, 1024, 2048)),
            "role": role,
            "runtime": rng.choice(RUNTIMES),
            "timeout": rng.choice((10, 20, 30)),
            "environment": {"variables": env},
        }
        outputs = {
            "arn": f"arn:aws:lambda:{region}:{ACCOUNT}:function:{ident}",
            "codeSha256": _b64(rng, 32),
            "functionName": ident,
            "invokeArn": (
                f"arn:aws:apigateway:{region}:lambda:path/2015-03-31/functions/"
                f"arn:aws:lambda:{region}:{ACCOUNT}:function:{ident}/invocations"
            ),
            "lastModified": modified,
            "role": role,
            "sourceCodeHash": _b64(rng, 32),
            "sourceCodeSize": rng.randint(10_000, 5_000_000),
            "version": "$LATEST",
            "environment": {"variables": env},
            "loggingConfig": {"logFormat": "Text", "logGroup": f"/aws/lambda/{ident}"},
        }
    elif kind == 2:
        comp_type, child_type = "sst:aws:Role", "aws:iam/rolePolicy:RolePolicy"
        ident = f"{app}-{stage}-{name}Policy-{_suffix(rng)}"
        arns = [f"arn:aws:s3:::{app}-{stage}-{w}-{_suffix(rng)}/*" for w in rng.sample(WORDS, 2)]
        inputs = {
            "__defaults": ["name"],
            "policy": _policy(rng, arns),
            "role": f"{app}-{stage}-{name}Role-{_suffix(rng)}",
        }
        outputs = {**inputs, "id": f"{inputs['role']}:{ident}", "name": ident}
    else:
        comp_type, child_type = "sst:sst:Secret", "aws:ssm/parameter:Parameter"
        ident = f"/sst/{app}/{stage}/{name}"
        inputs = {"__defaults": [], "name": ident, "type": "SecureString"}
        outputs = {
            "arn": f"arn:aws:ssm:{region}:{ACCOUNT}:parameter{ident}",
            "name": ident,
            "type": "SecureString",
            "version": rng.randint(1, 40),
            "value": {
                "4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270",
                "ciphertext": f"v1:{_b64(rng, 12)}:{_b64(rng, rng.randint(40, 400))}",
            },
        }
    # What real resources carry besides: provider-assigned ids, hashes and tokens. The checksum's
    # length is the knob that brings zlib's ratio to that of real states (about 0.17).
    outputs.update(
        etag=rng.randbytes(16).hex(),
        checksum=_b64(rng, 240),
        revisionId=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        lastUpdated=_time(rng),
    )
    comp_urn = f"{base}{comp_type}::{name}"
    child_urn = f"{base}{comp_type}${child_type}::{name}{child_type.rsplit(':', 1)[1]}"
    component = {
        "urn": comp_urn,
        "custom": False,
        "type": comp_type,
        "parent": stack_urn,
        "created": created,
        "modified": modified,
    }
    child = {
        "urn": child_urn,
        "custom": True,
        "id": ident,
        "type": child_type,
        "inputs": inputs,
        "outputs": outputs,
        "parent": comp_urn,
        "provider": provider,
        "propertyDependencies": {k: [] for k in inputs if k != "__defaults"},
        "created": created,
        "modified": modified,
    }
    return [component, child]


def checkpoint(size: int, app: str = "bench-app", stage: str = "prod", seed: int = 1) -> bytes:
    """About `size` bytes of checkpoint JSON (4-space indent, as Pulumi writes it)."""
    rng = random.Random(seed)
    base = f"urn:pulumi:{stage}::{app}::"
    stack_urn = f"{base}pulumi:pulumi:Stack::{app}-{stage}"
    provider_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    provider = f"{base}pulumi:providers:aws::default_6_66_2::{provider_id}"
    resources: list[dict[str, Any]] = [
        {
            "urn": stack_urn,
            "custom": False,
            "type": "pulumi:pulumi:Stack",
            "outputs": {"app": app, "stage": stage},
        },
        {
            "urn": provider.rsplit("::", 1)[0],
            "custom": True,
            "id": provider_id,
            "type": "pulumi:providers:aws",
            "inputs": {"region": "us-east-1", "version": "6.66.2"},
            "outputs": {"region": "us-east-1", "version": "6.66.2"},
        },
    ]
    # Measure a sample, then generate the rest in one go (serializing twice would double the
    # cost at 100 MB). Resources sit 4 levels deep: each line carries 16 spaces of indent more.
    sample = [r for i in range(40) for r in _group(rng, app, stage, i, provider, stack_urn)]
    per_group = (
        sum(
            len(json.dumps(r, indent=4)) + 16 * json.dumps(r, indent=4).count("\n") + 18
            for r in sample
        )
        / 40
    )
    resources += sample
    groups = max(0, int(size / per_group) - 40)
    for i in range(40, 40 + groups):
        resources += _group(rng, app, stage, i, provider, stack_urn)
    state = {
        "version": 3,
        "checkpoint": {
            "stack": f"organization/{app}/{stage}",
            "latest": {
                "manifest": {
                    "time": TIME_PLACEHOLDER,
                    "magic": _b64(rng, 24),
                    "version": "v3.215.0",
                },
                "secrets_providers": {
                    "type": "passphrase",
                    "state": {"salt": "v1:" + _b64(rng, 8)},
                },
                "resources": resources,
                "metadata": {},
            },
        },
    }
    return (json.dumps(state, indent=4, ensure_ascii=False) + "\n").encode()


def variant(state: bytes, n: int) -> bytes:
    """The same state after deploy number `n`: a new manifest time, as every update writes."""
    new = f"2026-01-01T00:00:{n % 60:02d}.{n:09d}Z"[: len(TIME_PLACEHOLDER)]
    return state.replace(TIME_PLACEHOLDER.encode(), new.encode(), 1)


def deploy(state: bytes, n: int, resources: int = 5) -> bytes:
    """The state after deploy number `n`: a new manifest time and `resources` resources updated.

    An update of a function's code makes the provider rewrite its outputs (code hashes, last
    modified, etag, revision id, tokens) and Pulumi its `modified` time: those values are
    redrawn in place (same length, same kind of character). Which resources is drawn from `n`.
    Apply it to the previous deploy's state so changes accumulate as in real history.
    """
    rng = random.Random(f"deploy {n}")
    out = bytearray(variant(state, n))
    marks = [m.start() for m in _ETAG.finditer(out)]
    for mark in rng.sample(marks, min(resources, len(marks))):
        outputs = out.rfind(b'"outputs": {', 0, mark)
        spans = [(outputs, mark, f) for f in _BEFORE_ETAG] + [(mark, len(out), f) for f in _AFTER]
        for lo, hi, field in spans:
            at = out.find(field, lo, hi)
            if at < 0:
                continue
            at += len(field)
            end = out.index(b'"', at)
            out[at:end] = bytes(_redraw(rng, c) for c in out[at:end])
    return bytes(out)


_ETAG = re.compile(rb'"etag": "')
_BEFORE_ETAG = (b'"codeSha256": "', b'"lastModified": "', b'"sourceCodeHash": "')
_AFTER = (b'"etag": "', b'"checksum": "', b'"revisionId": "', b'"lastUpdated": "', b'"modified": "')
_DIGITS, _LOWER, _UPPER = (
    b"0123456789",
    b"abcdefghijklmnopqrstuvwxyz",
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
)


def _redraw(rng: random.Random, c: int) -> int:
    for alphabet in (_DIGITS, _LOWER, _UPPER):
        if c in alphabet:
            return rng.choice(alphabet[:6] if alphabet is _LOWER and c < ord("g") else alphabet)
    return c


def zdict() -> bytes:
    """How format v2's preset dictionary (`vault.envelope.ZDICT_V2`) was made: reproducible.

    A checkpoint of a neutral app and stage (not the bench's), cut before its closing lines, with
    every run of 16 or more id-like characters removed (ids, hashes, tokens: noise in a
    dictionary), its last 32 KiB (zlib's window; the end is what matches at the shortest
    distances). tests/test_format_v2.py checks that this still gives the pinned bytes.
    """
    text = checkpoint(200_000, app="sst-app", stage="dev", seed=99)
    text = text[: text.rindex(b'\n            ],\n            "metadata"')]
    return re.sub(rb"[A-Za-z0-9+/=_-]{16,}", b"", text)[-32 * 1024 :]
