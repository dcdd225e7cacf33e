"""Recover an SST state file from an sst-vault file without sst-vault (format versions 1, 2).

Needs only Python 3.11 and `cryptography`; it follows the format as specified in SECURITY.md
(and the docstring of vault/envelope.py), so it keeps working if sst-vault is gone.

age backend: get the vault's data key with the real age CLI, then decrypt:

    age -d -i key.txt infra/state/data-key.age > data-key.bin      # 32 raw bytes
    python examples/recover.py --data-key-file data-key.bin infra/state/app/prod.json.vault \
        > ~/.config/sst/state/app/<app>/prod.json
    # or: --data-key-hex "$(age -d -i key.txt infra/state/data-key.age | xxd -p -c 64)"

fernet backend: python examples/recover.py --fernet-key-file key.txt FILE > OUT
    # or: --fernet-key "$SST_VAULT_KEY" (with several keys, the one the file was sealed under)

Command-line arguments are visible to other users of the machine (ps): on a shared machine
prefer --data-key-file. The plaintext goes to stdout (or -o FILE); the header goes to stderr.
Exit status 1 with a one-line message when the file does not open.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import struct
import sys
import zlib
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC, CHUNK, TAG = b"SSTVAULT", 64 * 1024, 16
# Format v2's preset zlib dictionary (SECURITY.md gives its SHA-256).
ZDICT_V2 = (
    b'"ciphertext": "v1:"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270","'
    b'plaintext": "sourceCodeHash": ""lastModified": ""etag": ""qualifiedArn": ""invokeArn": "ar'
    b'n:aws:apigateway:"policy": "{\\"Statement\\":[{\\"Action\\":[\\"\\"Effect\\":\\"Allow\\",'
    b'\\"Resource\\":[\\"arn:aws:\\"Version\\":\\"2012-10-17\\"}""assumeRolePolicy": ""managedPo'
    b'licyArns": ["environment": {"variables": {"SST_RESOURCE_"architectures": [\n"arm64""handle'
    b'r": ""memorySize": "runtime": "nodejs"timeout": "role": "arn:aws:iam::"region": "us-east-1'
    b'""bucket": ""bucketDomainName": ".s3.amazonaws.com""hostedZoneId": ""forceDestroy": true"v'
    b'ersionings": ["enabled": false"mfaDelete": false"tags": {"sst:app": ""sst:stage": ""tagsAl'
    b'l": {"name": ""sst:aws:Function"sst:aws:Bucket"aws:lambda/function:Function"aws:iam/role:R'
    b'ole"aws:s3/bucketV2:BucketV2"aws:iam/rolePolicy:RolePolicy"aws:cloudwatch/logGroup:LogGrou'
    b'p"pulumi:providers:aws"pulumi:pulumi:Stack::default_6_66_2::"propertyDependencies": {"depe'
    b'ndencies": ["created": "20"modified": "20"__defaults": [],"id": ""arn": "arn:aws:"parent":'
    b' "urn:pulumi:"provider": "urn:pulumi:"outputs": {"inputs": {"custom": true,"custom": false'
    b',"type": ""urn": "urn:pulumi:\n                    \n                },\n                {'
    b"\n\n            ]\n\n                        \n                            \n             "
    b"                   "
)


def hkdf(ikm: bytes, salt: bytes | None, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def recover_v2(raw: bytes, body: bytes, header: dict, ikm: bytes) -> bytes:
    """Format v2: a sealed manifest, then length-prefixed AES-SIV chunks, each one zlib stream."""
    context = json.dumps([header["app"], header["stage"], header["kind"]], separators=(",", ":"))
    salt = bytes.fromhex(header["salt"]) or None
    chunk_key = hkdf(ikm, salt, b"sst-vault/2 chunk key " + context.encode(), 64)
    manifest_key = hkdf(ikm, None, b"sst-vault/2 manifest key " + context.encode(), 64)
    try:
        manifest = AESSIV(manifest_key).decrypt(body[:60], [raw])
    except InvalidTag:
        raise ValueError("authentication failed (wrong key, or header/manifest tampered)") from None
    size, count, digest = struct.unpack(">QI32s", manifest)
    at, ivs, pieces = 60, hashlib.sha256(), []
    for _ in range(count):
        (length,) = struct.unpack(">I", body[at : at + 4])
        sealed = body[at + 4 : at + 4 + length]
        at += 4 + length
        try:
            compressed = AESSIV(chunk_key).decrypt(sealed, None)
        except InvalidTag:
            raise ValueError("authentication failed (a chunk was tampered)") from None
        ivs.update(sealed[:16])
        inflate = zlib.decompressobj(zdict=ZDICT_V2)
        pieces.append(inflate.decompress(compressed, size + 1))
        if not inflate.eof or inflate.unused_data:
            raise ValueError("a chunk is not one complete zlib stream")
    plain = b"".join(pieces)
    if at != len(body) or len(plain) != size or not hmac.compare_digest(ivs.digest(), digest):
        raise ValueError("the chunks are not the ones sealed (reordered, dropped or spliced)")
    return plain


def recover(blob: bytes, *, data_key: bytes | None = None, fernet_key: bytes | None = None):
    """Return (header, plaintext) of a vault file; raise ValueError when it does not open."""
    if blob[:8] != MAGIC:
        raise ValueError("not an sst-vault file")
    version, length = struct.unpack(">BI", blob[8:13])
    if version not in (1, 2):
        raise ValueError(f"format version {version}; this script reads versions 1 and 2")
    raw = blob[13 : 13 + length]
    header, body, h = json.loads(raw), blob[13 + length :], hashlib.sha256(raw).digest()
    if version == 2:
        if data_key is None and fernet_key is None:
            raise ValueError("this file needs the data key (age) or the Fernet key")
        ikm = data_key if data_key is not None else base64.urlsafe_b64decode(fernet_key)
        plain = recover_v2(raw, body, header, ikm)
        compressed = None
    elif header["cipher"] == "fernet":
        if fernet_key is None:
            raise ValueError("this file needs --fernet-key")
        ikm = base64.urlsafe_b64decode(fernet_key)
        try:
            token = Fernet(fernet_key).decrypt(body)
        except InvalidToken:
            raise ValueError("authentication failed (wrong key or tampered)") from None
        if not hmac.compare_digest(token[:32], h):
            raise ValueError("the header does not belong to this body")
        compressed = token[32:]
    else:
        if data_key is None:
            raise ValueError("this file needs --data-key-hex or --data-key-file")
        ikm = data_key
        file_key = hkdf(ikm, bytes.fromhex(header["salt"]), b"sst-vault/1 payload" + h)
        aead = ChaCha20Poly1305(file_key)
        chunks = [body[i : i + CHUNK + TAG] for i in range(0, len(body), CHUNK + TAG)] or [b""]
        try:
            compressed = b"".join(
                aead.decrypt(i.to_bytes(11, "big") + bytes([i == len(chunks) - 1]), c, None)
                for i, c in enumerate(chunks)
            )
        except InvalidTag:
            raise ValueError("authentication failed (wrong key or tampered)") from None
    key_id = "svk1-" + hkdf(ikm, None, b"sst-vault/1 key id")[:16].hex()
    if key_id != header["key_id"]:
        raise ValueError(f"the key has id {key_id}, the file was sealed under {header['key_id']}")
    if compressed is not None:
        plain = zlib.decompress(compressed)
    mac = hmac.new(hkdf(ikm, None, b"sst-vault/1 fingerprint"), plain, hashlib.sha256)
    # v2 shows the size in clear only rounded up to a multiple of 4096 (the exact one is sealed).
    shown = len(plain) if version == 1 else -(-len(plain) // 4096) * 4096
    if shown != header["size"] or mac.hexdigest() != header["fingerprint"]:
        raise ValueError("the plaintext does not match its header")
    return header, plain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="a .json.vault file")
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--data-key-hex", help="age backend: the data key, 64 hex digits")
    key.add_argument("--data-key-file", type=Path, help="age backend: file of the raw data key")
    key.add_argument("--fernet-key", help="fernet backend: the Fernet key (SST_VAULT_KEY)")
    key.add_argument("--fernet-key-file", type=Path, help="fernet backend: file of the key")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    data_key = None
    if args.data_key_hex:
        data_key = bytes.fromhex(args.data_key_hex.strip())
    elif args.data_key_file:
        data_key = args.data_key_file.read_bytes()
        if len(data_key) != 32:  # also accept the hex form, as `xxd -p -c 64` prints it
            data_key = bytes.fromhex(data_key.decode("ascii", "replace").strip())
    fernet_key = args.fernet_key
    if args.fernet_key_file:  # the first line that is not a comment, as in SST_VAULT_KEY_FILE
        lines = args.fernet_key_file.read_text().splitlines()
        fernet_key = next((ln for ln in lines if ln.strip() and ln[0] != "#"), "")
    try:
        if data_key is not None and len(data_key) != 32:
            raise ValueError("the data key must be 32 bytes")
        header, plain = recover(
            args.file.read_bytes(),
            data_key=data_key,
            fernet_key=fernet_key.strip().encode() if fernet_key else None,
        )
    except (ValueError, KeyError, zlib.error, struct.error) as exc:
        print(f"Error: {args.file}: {exc}", file=sys.stderr)
        return 1
    shown = {k: header[k] for k in ("app", "stage", "kind", "serial", "writer", "time")}
    print(json.dumps(shown), file=sys.stderr)
    if args.output:
        args.output.write_bytes(plain)
    else:
        sys.stdout.buffer.write(plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
