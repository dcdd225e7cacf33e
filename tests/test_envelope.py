"""The encrypted file format (vault.envelope) at library level: real crypto, no CLI.

Guarantees 1, 3, 4, 5 of DESIGN.md: authenticated encryption with a fresh salt per write, an
authenticated clear header bound to app/stage/kind, compression, and fail-closed parsing with
one error class per reason. Test vectors in tests/testdata/ pin the format byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import struct
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vault import envelope
from vault.envelope import CHUNK_SIZE, TAG_SIZE, FileKey
from vault.errors import (
    FileFormatError,
    NewerFormatError,
    NotAVaultFileError,
    TamperedError,
    VaultError,
    WrongKeyError,
)
from vault.keys import key_id_of

TESTDATA = Path(__file__).parent / "testdata"
META = {"app": "demo-app", "stage": "prod", "kind": "app"}
WHERE = Path("infra/state/app/prod.json.vault")
BLOCK = CHUNK_SIZE + TAG_SIZE


def stream_key(seed: int = 1) -> FileKey:
    data_key = hashlib.sha256(b"data key %d" % seed).digest()
    return FileKey(key_id_of(data_key), envelope.CIPHER_STREAM, data_key)


def fernet_key(seed: int = 1) -> FileKey:
    raw = hashlib.sha256(b"fernet key %d" % seed).digest()
    return FileKey(key_id_of(raw), envelope.CIPHER_FERNET, base64.urlsafe_b64encode(raw))


KEYS = {"stream": stream_key, "fernet": fernet_key}
BIG = 2 * 1024 * 1024  # past envelope._ISAL_MIN: ISA-L's zlib, when installed, handles these


def use_zlib(monkeypatch: pytest.MonkeyPatch, codec: str) -> None:
    """Make the envelope compress and decompress files over 1 MiB with `codec` from now on."""
    if codec == "isal":
        pytest.importorskip("isal", reason="ISA-L has no wheel for this platform")
        monkeypatch.delenv("SST_VAULT_NO_ISAL", raising=False)
    else:
        monkeypatch.setenv("SST_VAULT_NO_ISAL", "1")
    assert (envelope._isal_zlib(BIG) is not None) == (codec == "isal")


def seal(plain: bytes, key: FileKey, **meta: object) -> bytes:
    args = {**META, "serial": 3, "writer": "ci@runner", "version": 1, **meta}
    return envelope.seal_bytes(plain, key, **args)[1]


def open_(blob: bytes, key: FileKey, **meta: str) -> bytes:
    return envelope.open_bytes(blob, key, WHERE, **{**META, **meta})[1]


def noise(size: int, seed: int = 0) -> bytes:
    """Incompressible bytes: the compressed size is the plaintext size plus a little."""
    return random.Random(seed).randbytes(size)


def compressed_size(plain: bytes) -> int:
    comp = zlib.compressobj(envelope.COMPRESSION_LEVEL)
    return len(comp.compress(plain) + comp.flush())


def noise_compressing_to(target: int) -> bytes:
    """Random bytes whose zlib stream (as the envelope writes it) is exactly `target` bytes."""
    size = target
    for _ in range(20):
        got = compressed_size(noise(size))
        if got == target:
            return noise(size)
        size += target - got
    raise AssertionError(f"no plaintext compresses to {target} bytes")


def split(blob: bytes) -> tuple[bytes, dict, bytes]:
    length = struct.unpack(">I", blob[9:13])[0]
    return blob[:13], json.loads(blob[13 : 13 + length]), blob[13 + length :]


def with_header(blob: bytes, **changes: object) -> bytes:
    """Re-encode the header with `changes`, keeping it valid JSON and the length prefix right."""
    prefix, fields, body = split(blob)
    raw = json.dumps({**fields, **changes}, sort_keys=True, separators=(",", ":")).encode()
    return prefix[:9] + struct.pack(">I", len(raw)) + raw + body


def flip(blob: bytes, index: int) -> bytes:
    data = bytearray(blob)
    data[index] ^= 0x80
    return bytes(data)


def body_offset(blob: bytes) -> int:
    return 13 + struct.unpack(">I", blob[9:13])[0]


def pulumi_like(size: int) -> bytes:
    """Pulumi-checkpoint-shaped JSON of about `size` bytes."""
    rng = random.Random(size)
    resources: list[dict] = []
    total = 0
    while total < size:
        n = len(resources)
        resources.append(
            {
                "urn": f"urn:pulumi:prod::demo-app::aws:s3/bucket:Bucket::bucket{n}",
                "type": "aws:s3/bucket:Bucket",
                "id": f"demo-app-prod-bucket{n}-{rng.getrandbits(32):08x}",
                "outputs": {"arn": f"arn:aws:s3:::bucket{n}", "tags": {"sst:app": "demo-app"}},
            }
        )
        total += len(json.dumps(resources[-1]))
    return json.dumps({"version": 3, "checkpoint": {"resources": resources}}, indent=4).encode()


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", ["stream", "fernet"])
@pytest.mark.parametrize(
    "plain",
    [b"", b"{}", b"x", pulumi_like(10_000)],
    ids=["empty", "two-bytes", "one-byte", "10k-json"],
)
def test_round_trip_small(cipher, plain):
    key = KEYS[cipher]()
    blob = seal(plain, key)
    assert open_(blob, key) == plain
    header, _ = envelope.read_header(io.BytesIO(blob), WHERE)
    assert (header.app, header.stage, header.kind, header.serial) == ("demo-app", "prod", "app", 3)
    assert header.size == len(plain) and header.key_id == key.key_id
    assert header.fingerprint == envelope.fingerprint(key, plain)


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_chunk_boundaries(delta):
    """Compressed size exactly CHUNK_SIZE is one (last) chunk; one byte more is two."""
    key = stream_key()
    plain = noise_compressing_to(CHUNK_SIZE + delta)
    blob = seal(plain, key)
    body = len(blob) - body_offset(blob)
    compressed = CHUNK_SIZE + delta
    if delta <= 0:
        assert body == compressed + TAG_SIZE  # one chunk, flagged last
    else:
        assert body == BLOCK + (compressed - CHUNK_SIZE) + TAG_SIZE  # full chunk + 1-byte chunk
    assert open_(blob, key) == plain


@pytest.mark.parametrize("cipher", ["stream", "fernet"])
def test_multi_megabyte_round_trip_compresses(cipher):
    key = KEYS[cipher]()
    plain = pulumi_like(3 * 1024 * 1024) + noise(300_000)  # several chunks, mixed content
    blob = seal(plain, key)
    assert open_(blob, key) == plain
    assert len(blob) < 0.5 * len(plain)  # guarantee 4: compressed before encryption


def test_multi_chunk_noise_round_trip():
    key = stream_key()
    plain = noise(5 * CHUNK_SIZE + 12345)
    blob = seal(plain, key)
    assert (len(blob) - body_offset(blob)) // BLOCK == 5
    assert open_(blob, key) == plain


@pytest.mark.parametrize("codec", ["isal", "stdlib"])
def test_highly_compressible_file_opens_in_bounded_steps(monkeypatch, codec):
    """A 64 KiB chunk of zlib may expand a thousandfold; output still arrives in pieces."""
    use_zlib(monkeypatch, codec)
    key = stream_key()
    plain = bytes(40 * 1024 * 1024)
    blob = seal(plain, key)
    assert len(blob) < 100_000

    class Sizes(io.RawIOBase):
        def __init__(self) -> None:
            self.sizes: list[int] = []

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:  # type: ignore[override]
            self.sizes.append(len(data))
            return len(data)

    out = Sizes()
    envelope.open_(io.BytesIO(blob), out, key, WHERE, **META)
    assert sum(out.sizes) == len(plain)
    assert max(out.sizes) <= 1024 * 1024


# --- randomness and determinism -----------------------------------------------------------


@pytest.mark.parametrize("cipher", ["stream", "fernet"])
def test_fresh_salt_on_every_write(cipher):
    key = KEYS[cipher]()
    plain = pulumi_like(2000)
    one, two = seal(plain, key), seal(plain, key)
    assert one != two
    (_, h1, b1), (_, h2, b2) = split(one), split(two)
    assert h1["salt"] != h2["salt"] and b1 != b2
    assert h1["fingerprint"] == h2["fingerprint"]  # "unchanged" is decided without decrypting
    assert open_(one, key) == open_(two, key) == plain


def test_injected_time_and_randomness_give_identical_bytes():
    key = stream_key()
    now = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    plain = pulumi_like(200_000)

    def sealed() -> bytes:
        return seal(plain, key, now=now, randbytes=lambda n: b"\x07" * n)

    assert sealed() == sealed()
    _, fields, _ = split(sealed())
    assert fields["time"] == "2026-05-06T07:08:09Z"
    assert fields["salt"] == "07" * envelope.SALT_SIZE


def test_fernet_token_carries_the_injected_time():
    from cryptography.fernet import Fernet

    key = fernet_key()
    now = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    blob = seal(b"{}", key, now=now)
    token = blob[body_offset(blob) :]
    assert Fernet(key.secret).extract_timestamp(token) == int(now.timestamp())
    assert split(blob)[1]["time"] == "2026-05-06T07:08:09Z"


def test_source_changing_between_passes_is_refused():
    """seal reads its source twice; SST writing meanwhile must not produce a mismatched file."""

    class Growing(io.BytesIO):
        reads = 0

        def seek(self, pos: int, whence: int = 0) -> int:
            self.reads += 1
            if self.reads == 2:
                self.write(b"more")
            return super().seek(pos, whence)

    with pytest.raises(envelope.ChangedWhileReading) as info:
        envelope.seal(
            Growing(b'{"a": 1}'),
            io.BytesIO(),
            stream_key(),
            serial=1,
            writer="w",
            **META,
            version=1,
        )
    assert isinstance(info.value, VaultError)


# --- failures: one class per reason -------------------------------------------------------


def expect(blob: bytes, key: FileKey, error: type[FileFormatError], **meta: str) -> str:
    with pytest.raises(error) as info:
        open_(blob, key, **meta)
    message = str(info.value)
    assert str(WHERE) in message and info.value.reason in message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("cipher", ["stream", "fernet"])
def test_flipped_byte_in_body_is_tampered(cipher):
    key = KEYS[cipher]()
    blob = seal(pulumi_like(300_000) + noise(150_000), key)
    start = body_offset(blob)
    for index in (start, start + 1000, start + BLOCK + 5, len(blob) - 17, len(blob) - 1):
        expect(flip(blob, index), key, TamperedError)


@pytest.mark.parametrize("cipher", ["stream", "fernet"])
def test_truncation(cipher):
    key = KEYS[cipher]()
    blob = seal(noise(2 * CHUNK_SIZE + 500), key)
    start = body_offset(blob)
    # Less than the signature is no vault file at all; a cut anywhere after it is tampering.
    for cut in (0, 3, 7):
        expect(blob[:cut], key, NotAVaultFileError)
    points = [8, 9, 12, 13, 40, start - 1, start, start + 10, len(blob) - 1]
    if cipher == "stream":
        points += [start + BLOCK - 1, start + BLOCK, start + BLOCK + 1, start + 2 * BLOCK]
    for cut in points:
        expect(blob[:cut], key, TamperedError)


@pytest.mark.parametrize("cipher", ["stream", "fernet"])
@pytest.mark.parametrize(
    "change",
    [
        {"serial": 4},
        {"serial": 1000000},
        {"writer": "mallory@evil"},
        {"time": "2030-01-01T00:00:00Z"},
        {"size": 1},
        {"fingerprint": "00" * 32},
        {"salt": "11" * 32},
        {"compression": "zlib "},
    ],
    ids=lambda c: next(iter(c)),
)
def test_header_edit_is_tampered(cipher, change):
    key = KEYS[cipher]()
    blob = seal(pulumi_like(5000), key)
    expect(with_header(blob, **change), key, TamperedError)


@pytest.mark.parametrize("cipher", ["stream", "fernet"])
def test_same_header_reencoded_is_tampered(cipher):
    """The header is authenticated as bytes: even an equivalent JSON spelling fails."""
    key = KEYS[cipher]()
    blob = seal(b"{}", key)
    prefix, fields, body = split(blob)
    raw = json.dumps(fields, indent=1).encode()
    expect(prefix[:9] + struct.pack(">I", len(raw)) + raw + body, key, TamperedError)


@pytest.mark.parametrize("cipher", ["stream", "fernet"])
@pytest.mark.parametrize("field", ["app", "stage", "kind"])
def test_file_moved_to_another_app_stage_or_kind_is_tampered(cipher, field):
    key = KEYS[cipher]()
    blob = seal(b'{"a": 1}', key)
    other = {"app": "other-app", "stage": "staging", "kind": "secret"}[field]
    # Moved as is: the header names where it belongs.
    assert f"file belongs to {field}" in expect(blob, key, TamperedError, **{field: other})
    # Moved and the header edited to match: the authentication fails instead.
    expect(with_header(blob, **{field: other}), key, TamperedError, **{field: other})


@pytest.mark.parametrize("cipher", ["stream", "fernet"])
def test_cipher_swapped_in_header_is_tampered(cipher):
    key = KEYS[cipher]()
    other = "fernet" if cipher == "stream" else "chacha20-poly1305"
    expect(with_header(seal(b"{}", key), cipher=other), key, TamperedError)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"SST",
        b'{"version": 3, "checkpoint": {}}\n',
        base64.b64encode(bytes(32)),
        b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n-----END AGE ENCRYPTED FILE-----\n",
        b"age-encryption.org/v1\n-> X25519 abc\n",
        b"sstvault\x01\x00\x00\x00\x02{}",
        bytes(100),
    ],
    ids=["empty", "short", "json", "passphrase", "age-armor", "age-binary", "lowercase", "zeros"],
)
@pytest.mark.parametrize("cipher", ["stream", "fernet"])
def test_not_a_vault_file(cipher, data):
    expect(data, KEYS[cipher](), NotAVaultFileError)


@pytest.mark.parametrize("cipher", ["stream", "fernet"])
def test_newer_format_version(cipher):
    key = KEYS[cipher]()
    blob = seal(b"{}", key)
    for version in (3, 255):
        message = expect(blob[:8] + bytes([version]) + blob[9:], key, NewerFormatError)
        assert "upgrade sst-vault" in message
    # A newer version is recognised before its header is parsed: its layout may differ.
    expect(blob[:8] + b"\x03" + b"\xff" * 40, key, NewerFormatError)
    # Version 0 never existed.
    expect(blob[:8] + b"\x00" + blob[9:], key, TamperedError)


@pytest.mark.parametrize("cipher", ["stream", "fernet"])
def test_wrong_key(cipher):
    make = KEYS[cipher]
    blob = seal(b'{"a": 1}', make(1))
    message = expect(blob, make(2), WrongKeyError)
    assert make(1).key_id in message and make(2).key_id in message


def test_key_id_swapped_in_header_does_not_open():
    """A file claiming another key's id, or sealed under a key that claims ours, never opens."""
    mine, theirs = stream_key(1), stream_key(2)
    forged = FileKey(mine.key_id, theirs.cipher, theirs.secret)  # attacker lies about the id
    expect(seal(b'{"a": 1}', forged), mine, TamperedError)
    expect(with_header(seal(b"{}", mine), key_id=theirs.key_id), mine, WrongKeyError)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"v": 1}',
        b"\xff\xfe",
        b"[" * 5000 + b"]" * 5000,
    ],
    ids=["text", "list", "empty-object", "missing-fields", "not-utf8", "deeply-nested"],
)
def test_malformed_header_is_tampered(raw):
    key = stream_key()
    blob = seal(b"{}", key)
    _, _, body = split(blob)
    expect(b"SSTVAULT\x01" + struct.pack(">I", len(raw)) + raw + body, key, TamperedError)


@pytest.mark.parametrize("change", [{"v": 2}, {"serial": "3"}, {"salt": "xyz"}, {"extra": 1}])
def test_ill_typed_header_is_tampered(change):
    key = stream_key()
    expect(with_header(seal(b"{}", key), **change), key, TamperedError)


def test_oversized_header_length_is_tampered():
    key = stream_key()
    blob = seal(b"{}", key)
    for length in (envelope.MAX_HEADER_SIZE + 1, 2**32 - 1, len(blob)):
        expect(blob[:9] + struct.pack(">I", length) + blob[13:], key, TamperedError)


def test_chunk_reordering_dropping_and_appending():
    key = stream_key()
    blob = seal(noise(3 * CHUNK_SIZE + 100), key)
    start = body_offset(blob)
    head, body = blob[:start], blob[start:]
    chunks = [body[i : i + BLOCK] for i in range(0, len(body), BLOCK)]
    assert len(chunks) == 4 and len(chunks[-1]) < BLOCK
    expect(head + chunks[1] + chunks[0] + chunks[2] + chunks[3], key, TamperedError)
    expect(head + chunks[0] + chunks[2] + chunks[1] + chunks[3], key, TamperedError)
    expect(head + b"".join(chunks[:3]), key, TamperedError)  # last chunk dropped
    expect(head + b"".join(chunks[:2]) + chunks[3], key, TamperedError)  # middle one dropped
    expect(blob + chunks[3], key, TamperedError)  # last chunk appended again
    expect(blob + chunks[0], key, TamperedError)  # a full chunk appended
    expect(blob + b"\x00" * TAG_SIZE, key, TamperedError)  # an empty chunk's worth
    # A whole chunk from another file under the same key, at the same position.
    other = seal(noise(3 * CHUNK_SIZE + 100, seed=9), key)
    swapped = other[body_offset(other) :][BLOCK : 2 * BLOCK]
    expect(head + chunks[0] + swapped + chunks[2] + chunks[3], key, TamperedError)


def test_empty_final_chunk_is_refused_even_when_authentic():
    """Only the writer's rule "the last chunk is empty only if it is the only one" stands
    between a full-chunk stream and an extension point; it must be enforced on read."""
    key = stream_key()
    plain = noise_compressing_to(CHUNK_SIZE)
    blob = seal(plain, key)
    header, raw = envelope.read_header(io.BytesIO(blob), WHERE)
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    aead = ChaCha20Poly1305(envelope._file_key(key, header, raw))
    start = body_offset(blob)
    chunk = aead.decrypt(envelope._nonce(0, last=True), blob[start:], None)
    forged = (
        blob[:start]
        + aead.encrypt(envelope._nonce(0, last=False), chunk, None)
        + aead.encrypt(envelope._nonce(1, last=True), b"", None)
    )
    assert "empty final chunk" in expect(forged, key, TamperedError)


def resealed(blob: bytes, key: FileKey, compressed: bytes) -> bytes:
    """`blob`'s header over a body that encrypts `compressed` correctly: authentic to the AEAD."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    header, raw = envelope.read_header(io.BytesIO(blob), WHERE)
    aead = ChaCha20Poly1305(envelope._file_key(key, header, raw))
    pieces = [compressed[i : i + CHUNK_SIZE] for i in range(0, len(compressed), CHUNK_SIZE)]
    pieces = pieces or [b""]
    body = b"".join(
        aead.encrypt(envelope._nonce(i, last=i == len(pieces) - 1), piece, None)
        for i, piece in enumerate(pieces)
    )
    return blob[: body_offset(blob)] + body


@pytest.mark.parametrize(
    ("codec", "plain"), [("stdlib", b"{}"), ("isal", pulumi_like(BIG))], ids=["small", "2MiB"]
)
def test_authentic_but_corrupt_compression_is_tampered(monkeypatch, codec, plain):
    """Belt and braces behind the AEAD: what decrypts must also be one complete zlib stream."""
    use_zlib(monkeypatch, codec)
    key = stream_key()
    blob = seal(plain, key)
    good = zlib.compress(plain)
    assert open_(resealed(blob, key, good), key) == plain
    bad_checksum = good[:-1] + bytes([good[-1] ^ 1])
    broken = (good[:-2], good + b"junk", b"not zlib at all", good + good, bad_checksum)
    for compressed in broken:
        expect(resealed(blob, key, compressed), key, TamperedError)


@pytest.mark.parametrize("writer", ["isal", "stdlib"])
@pytest.mark.parametrize("reader", ["isal", "stdlib"])
@pytest.mark.parametrize("cipher", ["stream", "fernet"])
def test_both_zlib_codecs_write_and_read_one_format(monkeypatch, writer, reader, cipher):
    """ISA-L is a speed-up, not a format: either side may lack it (recover.py has only zlib)."""
    plain = pulumi_like(BIG) + noise(200_000)
    key = KEYS[cipher]()
    use_zlib(monkeypatch, writer)
    blob = seal(plain, key, serial=3, writer="w", level=3, workers=2)
    use_zlib(monkeypatch, reader)
    assert open_(blob, key) == plain
    assert len(blob) < 0.3 * len(plain)


def test_small_files_never_load_isal(monkeypatch):
    monkeypatch.delenv("SST_VAULT_NO_ISAL", raising=False)
    assert envelope._isal_zlib(envelope._ISAL_MIN - 1) is None


# --- test vectors (tests/testdata, written by make_vectors.py) ----------------------------

VECTOR_APP, VECTOR_STAGE = "vector-app", "prod"
VECTOR_DATA_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
VECTOR_FERNET_KEY = b"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
VECTOR_PLAIN = (
    b'{\n    "version": 3,\n    "checkpoint": {\n        "stack": "organization/vector-app/prod",'
    b'\n        "latest": {"resources": [], "marker": "sst-vault test vector \xc3\xa9"}\n    }\n}\n'
)
VECTOR_TWO_CHUNKS = hashlib.shake_256(b"sst-vault two-chunk vector").digest(CHUNK_SIZE)
VECTOR_TIME = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
VECTOR_SALT = bytes(range(0x40, 0x60))

# name -> (cipher, kind, expected error); every fail_*.vault must be listed here.
FAILURES: dict[str, tuple[str, str, type[FileFormatError]]] = {
    "fail_bad_tag.vault": ("stream", "app", TamperedError),
    "fail_bad_body.vault": ("stream", "app", TamperedError),
    "fail_truncated.vault": ("stream", "app", TamperedError),
    "fail_truncated_header.vault": ("stream", "app", TamperedError),
    "fail_truncated_prefix.vault": ("stream", "app", TamperedError),
    "fail_no_body.vault": ("stream", "app", TamperedError),
    "fail_bad_header.vault": ("stream", "app", TamperedError),
    "fail_header_writer.vault": ("stream", "app", TamperedError),
    "fail_header_not_json.vault": ("stream", "app", TamperedError),
    "fail_header_too_long.vault": ("stream", "app", TamperedError),
    "fail_version_zero.vault": ("stream", "app", TamperedError),
    "fail_newer_format.vault": ("stream", "app", NewerFormatError),
    "fail_not_vault.vault": ("stream", "app", NotAVaultFileError),
    "fail_empty.vault": ("stream", "app", NotAVaultFileError),
    "fail_wrong_key.vault": ("stream", "app", WrongKeyError),
    "fail_fernet_bad_token.vault": ("fernet", "app", TamperedError),
    "fail_fernet_bad_header.vault": ("fernet", "app", TamperedError),
    "fail_v1_size_not_int.vault": ("stream", "app", TamperedError),
    # Format v2 (tests/test_format_v2.py has the rest of its tests).
    "fail_v2_reordered.vault": ("stream", "app", TamperedError),
    "fail_v2_dropped.vault": ("stream", "app", TamperedError),
    "fail_v2_dropped_last.vault": ("stream", "app", TamperedError),
    "fail_v2_duplicated.vault": ("stream", "app", TamperedError),
    "fail_v2_spliced_version.vault": ("stream", "app", TamperedError),
    "fail_v2_spliced_file.vault": ("stream", "app", TamperedError),
    "fail_v2_trailing.vault": ("stream", "app", TamperedError),
    "fail_v2_padding_not_zero.vault": ("stream", "app", TamperedError),
    "fail_v2_padding_short.vault": ("stream", "app", TamperedError),
    "fail_v2_bad_chunk.vault": ("stream", "app", TamperedError),
    "fail_v2_bad_manifest.vault": ("stream", "app", TamperedError),
    "fail_v2_truncated.vault": ("stream", "app", TamperedError),
    "fail_v2_truncated_manifest.vault": ("stream", "app", TamperedError),
    "fail_v2_header_serial.vault": ("stream", "app", TamperedError),
    "fail_v2_header_size.vault": ("stream", "app", TamperedError),
    "fail_v2_size_not_int.vault": ("stream", "app", TamperedError),
    "fail_v2_size_huge.vault": ("stream", "app", TamperedError),
    "fail_v2_unknown_field.vault": ("stream", "app", TamperedError),
    "fail_v2_chunk_length_huge.vault": ("stream", "app", TamperedError),
    "fail_v2_wrong_key.vault": ("stream", "app", WrongKeyError),
}


def vector_key(cipher: str) -> FileKey:
    if cipher == "fernet":
        raw = base64.urlsafe_b64decode(VECTOR_FERNET_KEY)
        return FileKey(key_id_of(raw), envelope.CIPHER_FERNET, VECTOR_FERNET_KEY)
    return FileKey(key_id_of(VECTOR_DATA_KEY), envelope.CIPHER_STREAM, VECTOR_DATA_KEY)


def open_vector(name: str, cipher: str, kind: str) -> tuple[envelope.Header, bytes]:
    return envelope.open_bytes(
        (TESTDATA / name).read_bytes(),
        vector_key(cipher),
        TESTDATA / name,
        app=VECTOR_APP,
        stage=VECTOR_STAGE,
        kind=kind,
    )


@pytest.mark.parametrize(
    ("name", "cipher", "kind", "plain"),
    [
        ("vector-v1.vault", "stream", "app", VECTOR_PLAIN),
        ("vector-v1-two-chunks.vault", "stream", "secret", VECTOR_TWO_CHUNKS),
        ("vector-v1-fernet.vault", "fernet", "app", VECTOR_PLAIN),
    ],
)
def test_vector_opens_to_known_plaintext(name, cipher, kind, plain):
    header, got = open_vector(name, cipher, kind)
    assert got == plain
    assert (header.serial, header.writer, header.time) == (
        7,
        "vector@sst-vault",
        "2026-01-02T03:04:05Z",
    )
    assert header.key_id == vector_key(cipher).key_id


@pytest.mark.parametrize(
    ("name", "kind", "plain"),
    [
        ("vector-v1.vault", "app", VECTOR_PLAIN),
        ("vector-v1-two-chunks.vault", "secret", VECTOR_TWO_CHUNKS),
    ],
)
def test_writer_still_produces_the_vectors_byte_for_byte(name, kind, plain):
    """Format v1 is frozen: a change to the header, KDF, chunking or compression shows here."""
    _, blob = envelope.seal_bytes(
        plain,
        vector_key("stream"),
        app=VECTOR_APP,
        stage=VECTOR_STAGE,
        kind=kind,
        serial=7,
        writer="vector@sst-vault",
        now=VECTOR_TIME,
        randbytes=lambda n: VECTOR_SALT[:n],
        version=1,
    )
    assert blob == (TESTDATA / name).read_bytes()


def test_vector_key_ids_are_stable():
    assert vector_key("stream").key_id == "svk1-" + _expected_key_id(VECTOR_DATA_KEY)
    assert vector_key("fernet").key_id == "svk1-" + _expected_key_id(
        base64.urlsafe_b64decode(VECTOR_FERNET_KEY)
    )


def _expected_key_id(ikm: bytes) -> str:
    # HKDF-SHA-256 with no salt and one output block is HMAC(HMAC(zeros, ikm), info || 0x01).
    import hmac

    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, b"sst-vault/1 key id\x01", hashlib.sha256).digest()[:16].hex()


def test_every_failure_file_is_listed():
    assert sorted(p.name for p in TESTDATA.glob("fail_*.vault")) == sorted(FAILURES)


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_failure_vectors(name):
    cipher, kind, error = FAILURES[name]
    with pytest.raises(FileFormatError) as info:
        open_vector(name, cipher, kind)
    assert type(info.value) is error, str(info.value)
    assert name in str(info.value)
