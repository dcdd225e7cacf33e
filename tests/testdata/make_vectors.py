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
import os
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
    """Format v1, frozen: what v1 vaults in the wild hold."""
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
        version=1,
    )
    return blob


# Format v2: about 60 KB of JSON-like text with one 20 KB run written twice, so the cutter finds
# equal chunks (which must seal to equal bytes) and the file has enough chunks to reorder.
_RUN = hashlib.shake_256(b"sst-vault v2 run").hexdigest(10_000).encode()
CHUNKS = (
    b"".join(
        b'{"urn": "urn:pulumi:prod::vector-app::sst:aws:Function::F%d", "hash": "%s"},\n'
        % (i, hashlib.sha256(b"%d" % i).hexdigest().encode())
        for i in range(200)
    )
    + _RUN
    + b"\n"
    + _RUN
    + b"\n"
)


def seal_v2(plain: bytes, key: FileKey, kind: str, **options: object) -> bytes:
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
        **options,
    )
    return blob


def records(blob: bytes) -> tuple[bytes, list[bytes]]:
    """(everything up to the first chunk record, the records with their length prefix).

    The padding after the last record (zeros: a record's length is never 0) is left out.
    """
    length = struct.unpack(">I", blob[9:13])[0]
    at = 13 + length + envelope.MANIFEST_SIZE
    head, out = blob[:at], []
    # The padding may be shorter than a length prefix (1 to 3 zeros): stop there too.
    while at + 4 <= len(blob) and (size := struct.unpack(">I", blob[at : at + 4])[0]):
        out.append(blob[at : at + 4 + size])
        at += 4 + size
    return head, out


def padded(blob: bytes) -> bytes:
    """A v2 file's records as written: followed by the padding its length calls for."""
    return blob + bytes(envelope.padding(len(blob)))


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
    # v2 chunks are compressed with ISA-L where installed: the vectors pin the stdlib's zlib,
    # which every platform has (tests/test_format_v2.py reproduces them the same way).
    os.environ["SST_VAULT_NO_ISAL"] = "1"
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
        "fail_newer_format.vault": small[:8] + b"\x03" + small[9:],
        "fail_not_vault.vault": SMALL,
        "fail_empty.vault": b"",
        "fail_wrong_key.vault": seal(SMALL, stream_key(OTHER_DATA_KEY), "app"),
        "fail_fernet_bad_token.vault": flip(fern, len(fern) - 10),
        "fail_fernet_bad_header.vault": with_header(fern, serial=SERIAL + 1),
    }
    files.update(v2_files())
    for name, data in files.items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


def v2_files() -> dict[str, bytes]:
    small = seal_v2(SMALL, stream_key(), "app")
    chunked = seal_v2(CHUNKS, stream_key(), "app")
    head, recs = records(chunked)
    assert len(recs) >= 6 and len(set(recs)) < len(recs), "want several chunks, two equal"
    # Another version of the same file: the first chunk differs, the others are the same bytes.
    other = seal_v2(b"[" + CHUNKS[1:], stream_key(), "app")
    _, other_recs = records(other)
    assert other_recs[0] != recs[0] and other_recs[1:] == recs[1:]
    _, foreign = records(seal_v2(CHUNKS, stream_key(), "secret"))
    records_end = len(head) + sum(map(len, recs))
    assert len(chunked) > records_end, "want padding to tamper with"
    header_end = 13 + struct.unpack(">I", small[9:13])[0]
    return {
        "vector-v2.vault": small,
        "vector-v2-chunks.vault": chunked,
        "vector-v2-fixed.vault": seal_v2(CHUNKS, stream_key(), "secret", chunking=False),
        "vector-v2-fernet.vault": seal_v2(SMALL, fernet_key(), "app"),
        "vector-v2-empty.vault": seal_v2(b"", stream_key(), "passphrase"),
        "fail_v2_reordered.vault": padded(head + b"".join([recs[1], recs[0], *recs[2:]])),
        "fail_v2_dropped.vault": padded(head + b"".join(recs[:2] + recs[3:])),
        "fail_v2_dropped_last.vault": padded(head + b"".join(recs[:-1])),
        "fail_v2_duplicated.vault": padded(head + b"".join([recs[0], *recs])),
        "fail_v2_spliced_version.vault": padded(head + b"".join([other_recs[0], *recs[1:]])),
        "fail_v2_spliced_file.vault": padded(head + b"".join([foreign[0], *recs[1:]])),
        "fail_v2_trailing.vault": chunked + recs[-1],
        "fail_v2_padding_not_zero.vault": flip(chunked, len(chunked) - 1),
        "fail_v2_padding_short.vault": chunked[:-1],
        "fail_v2_bad_chunk.vault": flip(chunked, records_end - 5),
        "fail_v2_bad_manifest.vault": flip(small, header_end + 3),
        "fail_v2_truncated.vault": chunked[: records_end - 1],
        "fail_v2_truncated_manifest.vault": small[: header_end + 10],
        "fail_v2_header_serial.vault": with_header(small, serial=SERIAL + 1),
        "fail_v2_header_size.vault": with_header(small, size=8192),
        "fail_v2_size_not_int.vault": with_header(small, size="1"),
        "fail_v1_size_not_int.vault": with_header(seal(SMALL, stream_key(), "app"), size="1"),
        "fail_v2_size_huge.vault": with_header(small, size=1 << 62),
        "fail_v2_unknown_field.vault": with_header(small, extra=1),
        "fail_v2_chunk_length_huge.vault": padded(head + b"\xff\xff\xff\xff" + b"".join(recs)[4:]),
        "fail_v2_wrong_key.vault": seal_v2(SMALL, stream_key(OTHER_DATA_KEY), "app"),
    }


if __name__ == "__main__":
    main()
