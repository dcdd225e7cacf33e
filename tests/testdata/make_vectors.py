"""Write the format's test vectors and known-bad files into this folder (run once, commit).

    python tests/testdata/make_vectors.py

Like age's testdata: `vector-*.vault` must keep opening to the plaintext below with every
future version of sst-vault, and each `fail_*.vault` must keep failing with its error class
(tests/test_envelope.py holds the expectations). The chacha20-poly1305 vectors are
reproducible byte for byte from the fixed key, salt and time below; the fernet vector is not
(cryptography draws a Fernet token's IV itself), so regenerating rewrites it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from datetime import UTC, datetime
from pathlib import Path

from vault import envelope
from vault.envelope import CHUNK_SIZE, FileKey
from vault.keys import key_id_of

HERE = Path(__file__).resolve().parent

APP, STAGE, WRITER, SERIAL = "vector-app", "prod", "vector@sst-vault", 7
TIME = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DATA_KEY = bytes(range(32))
SALT = bytes(range(0x40, 0x60))
FERNET_KEY = base64.urlsafe_b64encode(bytes(range(0x20, 0x40)))
OTHER_DATA_KEY = bytes(range(0x80, 0xA0))
SMALL = (
    b'{\n    "version": 3,\n    "checkpoint": {\n        "stack": "organization/vector-app/prod",'
    b'\n        "latest": {"resources": [], "marker": "sst-vault test vector \xc3\xa9"}\n    }\n}\n'
)
# Incompressible, so the compressed stream is a little over one 64 KiB chunk: two chunks.
TWO_CHUNKS = hashlib.shake_256(b"sst-vault two-chunk vector").digest(CHUNK_SIZE)


def stream_key(data_key: bytes = DATA_KEY) -> FileKey:
    return FileKey(key_id_of(data_key), envelope.CIPHER_STREAM, data_key)


def fernet_key() -> FileKey:
    return FileKey(
        key_id_of(base64.urlsafe_b64decode(FERNET_KEY)), envelope.CIPHER_FERNET, FERNET_KEY
    )


def seal(plain: bytes, key: FileKey, kind: str) -> bytes:
    _, blob = envelope.seal_bytes(
        plain,
        key,
        app=APP,
        stage=STAGE,
        kind=kind,
        serial=SERIAL,
        writer=WRITER,
        now=TIME,
        randbytes=lambda n: SALT[:n],
    )
    return blob


def split(blob: bytes) -> tuple[bytes, dict, bytes]:
    """(prefix, header fields, body) of a vault file."""
    length = struct.unpack(">I", blob[9:13])[0]
    return blob[:13], json.loads(blob[13 : 13 + length]), blob[13 + length :]


def with_header(blob: bytes, **changes: object) -> bytes:
    """The same body under an edited (still valid JSON) header."""
    prefix, fields, body = split(blob)
    raw = json.dumps({**fields, **changes}, sort_keys=True, separators=(",", ":")).encode()
    return prefix[:9] + struct.pack(">I", len(raw)) + raw + body


def flip(blob: bytes, index: int) -> bytes:
    data = bytearray(blob)
    data[index] ^= 0x01
    return bytes(data)


def main() -> None:
    small = seal(SMALL, stream_key(), "app")
    two = seal(TWO_CHUNKS, stream_key(), "secret")
    fern = seal(SMALL, fernet_key(), "app")
    header_end = len(small) - len(split(small)[2])
    files = {
        "vector-v1.vault": small,
        "vector-v1-two-chunks.vault": two,
        "vector-v1-fernet.vault": fern,
        "fail_bad_tag.vault": flip(small, len(small) - 1),
        "fail_bad_body.vault": flip(small, header_end + 3),
        "fail_truncated.vault": small[:-1],
        "fail_truncated_header.vault": small[: header_end - 20],
        "fail_truncated_prefix.vault": small[:11],
        "fail_no_body.vault": small[:header_end],
        "fail_bad_header.vault": with_header(small, serial=SERIAL + 1),
        "fail_header_writer.vault": with_header(small, writer="mallory@sst-vault"),
        "fail_header_not_json.vault": small.replace(b'{"app"', b'["app"', 1),
        "fail_header_too_long.vault": small[:9] + struct.pack(">I", 1 << 20) + small[13:],
        "fail_version_zero.vault": small[:8] + b"\x00" + small[9:],
        "fail_newer_format.vault": small[:8] + b"\x02" + small[9:],
        "fail_not_vault.vault": SMALL,
        "fail_empty.vault": b"",
        "fail_wrong_key.vault": seal(SMALL, stream_key(OTHER_DATA_KEY), "app"),
        "fail_fernet_bad_token.vault": flip(fern, len(fern) - 10),
        "fail_fernet_bad_header.vault": with_header(fern, serial=SERIAL + 1),
    }
    for name, data in files.items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
