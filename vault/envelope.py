"""The encrypted file format: one SST file in one vault file. Writes version 2, reads 1 and 2.

This docstring is the specification (SECURITY.md repeats it); `examples/recover.py` decrypts a
vault file from it with `cryptography` and `zlib` alone. Use `seal`/`open_` (or the `_bytes`
variants); callers pass a `FileKey` and this module knows nothing of where keys come from.
Parsing untrusted bytes (`read_header`) is separate from verifying and decrypting (`open_`).
Every size read from a file is checked against a named limit (MAX_HEADER_SIZE, MAX_SEALED,
MAX_CHUNK, MAX_SIZE) before it is used; output never exceeds the authenticated size.

    file   = "SSTVAULT" version:u8 header_len:u32be header body      (integers big-endian)
    header = header_len (<= 16 KiB) bytes of JSON (sorted keys, no spaces), an object with
             exactly the fields of its version, each type- and range-checked before use:
             v, app, stage, kind, serial, key_id, writer, time, cipher, compression, salt,
             fingerprint (hex HMAC-SHA-256 of the plaintext), size; v2 adds chunking.

Keys, from IKM = the vault's 32-byte data key (age backend, unwrapped from data-key.age) or
the 32 bytes that the Fernet key base64url-decodes to (fernet backend), all with HKDF-SHA-256
(RFC 5869), length 32 unless said; "none" is RFC 5869's default salt (HashLen zero bytes):
    key_id      = "svk1-" + hex(HKDF(IKM, salt=none, info="sst-vault/1 key id")[:16])
    fingerprint = hex(HMAC-SHA-256(HKDF(IKM, salt=none, info="sst-vault/1 fingerprint"), plain))

Version 2 (what `seal` writes): content-defined chunks, each sealed deterministically, so the
parts of a state that a deploy did not change keep their bytes and git stores them once.
    header: v=2, cipher "aes-256-siv", compression "zlib+dict2", chunking "cdc" (salt "") or
            "fixed" (salt = 64 hex digits, fresh per write), size = the plaintext length
            rounded up to a multiple of SIZE_GRANULE (4096); the exact size is in the manifest.
    body   = manifest record* padding
    manifest = AES-SIV(manifest_key, AD=[header bytes as stored],
                       size:u64 || count:u32 || SHA-256(siv_1 || ... || siv_count))  (60 bytes)
    record_i = len:u32 sealed_i, sealed_i = AES-SIV(chunk_key, no AD, zlib_i), whose first
               16 bytes are siv_i; 16 < len <= MAX_SEALED
    zlib_i = chunk i of the plaintext as one zlib stream (RFC 1950) with preset dictionary
             ZDICT_V2 (32768 bytes; SHA-256 in SECURITY.md), written by Python's zlib at level
             9 ("cdc" files up to 16 MiB), else by ISA-L's zlib at level 2 where installed,
             else by Python's at level 6 (deterministic in each case)
    padding = zero bytes up to the next multiple of 2^min(16, max(9, bitlen(L) - 4)), L = the
             file's length through the last record (at most L / 8 and 64 KiB): versions of a
             file mostly have equal lengths, which lets `git gc` pair each with its neighbour
    context      = JSON [app, stage, kind] (no spaces, ASCII)
    chunk_key    = HKDF(IKM, bytes.fromhex(salt) or none, "sst-vault/2 chunk key " || context, 64)
    manifest_key = HKDF(IKM, none, "sst-vault/2 manifest key " || context, 64)
AES-SIV is RFC 5297 with a 64-byte key (cryptography's AESSIV). Chunks ("cdc"): FastCDC 2020
as pyfastcdc 0.3 implements it, average 1024, min 256, max 4096 bytes (files above 16 MiB:
65536, 16384, 262144), normalization 1, gear table XORed with
seed = (HKDF(IKM, none, "sst-vault/2 cut seed " || context, 8) as u64 >> 1) or 1, so where a
chunk ends depends on the key; ("fixed"): pieces of FIXED_CHUNK (1 MiB). The empty file has no
records. Readers do not need the cutter.
A reader checks the manifest first (any header edit fails there), that its size is in range and
rounds to the header's, then each of `count` records (length, AES-SIV, one complete zlib stream
of 1 to min(size, 262144 for "cdc" or MAX_CHUNK for "fixed") bytes, the running total never
above size before any of it is output), that the padding is
exactly its zero bytes and the file ends there, that the sizes add up and that the SIVs hash to
the manifest's (a reordered, dropped, duplicated or spliced chunk fails).

Version 1 (read only): cipher "chacha20-poly1305" or "fernet", compression "zlib", salt 64 hex
digits fresh per write, size exact; body = the SST file compressed as one zlib stream, then:
    file key = HKDF(IKM, salt=bytes.fromhex(header.salt), info="sst-vault/1 payload" || H)
with H = SHA-256 of the header bytes as stored. "chacha20-poly1305" (age backend): age's
STREAM payload construction under the file key: the compressed bytes cut into chunks of 64 KiB
(the last one shorter, and empty only when it is the only chunk); chunk i is ChaCha20-Poly1305
with no associated data and nonce = i as an 11-byte big-endian counter || 0x01 for the last
chunk, 0x00 otherwise. Because H is in the file key, editing any header byte makes the first
chunk fail; a dropped, reordered or appended chunk fails on the counter or the last-chunk flag.
"fernet" (fernet backend): one Fernet token under the Fernet key itself, whose plaintext is
H (32 bytes) || the compressed bytes.

A reader of either version checks, before trusting anything: the signature and version, that
app, stage and kind match where the file was found (a file moved to another app, stage or kind
must not open there), that key_id is the key it holds, the authentication of every part, and
finally that size and fingerprint match the decompressed plaintext. The fingerprint check guards
against a faulty writer, not an attacker (the header is authenticated, and so is every byte
without it): reading back a file just sealed must do it; `prepare` skips it.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import hmac
import json
import os
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import BinaryIO

from vault.errors import (
    NewerFormatError,
    NotAVaultFileError,
    RefusedError,
    TamperedError,
    WrongKeyError,
)

MAGIC = b"SSTVAULT"
FORMAT_VERSION = 2  # what `seal` writes; `open_` reads 1 and 2
V1 = 1
CHUNK_SIZE = 64 * 1024  # v1's fixed STREAM chunk
TAG_SIZE = 16
SALT_SIZE = 32
MAX_HEADER_SIZE = 16 * 1024  # a header is a few hundred bytes; anything huge is not ours
COMPRESSION_LEVEL = 6  # what the test vectors were written with; any level reads the same
CIPHER_STREAM = "chacha20-poly1305"
CIPHER_FERNET = "fernet"
_PREFIX = struct.Struct(">8sBI")
_READ_SIZE = 1024 * 1024
_WINDOW = 32 * 1024  # deflate's window: what a block may refer back to
_THREAD_MIN = 4 * _READ_SIZE  # below this a worker thread costs more than it overlaps
# Files this large are compressed and decompressed with ISA-L (the `isal` package) when it is
# installed: the same RFC 1950 streams, on 100 MB of Pulumi JSON about 5x faster to write and
# 2x faster to read than the stdlib's zlib, at a ratio of 0.195 instead of 0.182 (bench/).
# Smaller files are not worth its import. SST_VAULT_NO_ISAL=1 keeps to the stdlib.
_ISAL_MIN = _READ_SIZE


# --- format v2 (see the module docstring) -------------------------------------------------
CIPHER_SIV = "aes-256-siv"
COMPRESSION_V2 = "zlib+dict2"  # each chunk its own zlib stream, preset dictionary ZDICT_V2
CHUNKING_CDC = "cdc"  # content-defined boundaries, deterministic sealing (the default)
CHUNKING_FIXED = "fixed"  # FIXED_CHUNK-sized pieces under a fresh random key per write
SIZE_GRANULE = 4096  # the clear header's `size` is rounded up to a multiple of this
# The cutter (FastCDC 2020): boundaries at a mean of about 1.5 KiB of Pulumi JSON. Smaller
# chunks make a deploy cheaper in git (a change costs about one compressed chunk) but compress
# worse one by one; with zlib level 9 and the 32 KiB ZDICT_V2 they still compress to about a
# quarter (bench/README.md has the trade measured).
CDC_AVG, CDC_MIN, CDC_MAX = 1024, 256, 4096
# States above CDC_LARGE are cut 64x coarser and compressed faster (CHUNK_LEVEL_LARGE_*): far
# fewer chunks to compress, seal and open (speed at 100 MB: 16 KiB chunks cost a third more
# to compress and a fifth more to open, bench/README.md); a deploy there costs a few 64 KiB
# chunks instead.
CDC_LARGE = 16 * 1024 * 1024
CDC_LARGE_AVG, CDC_LARGE_MIN, CDC_LARGE_MAX = 65536, 16384, 262144
FIXED_CHUNK = 1024 * 1024
MAX_CHUNK = 1024 * 1024  # limit: plaintext bytes of any one chunk, whatever the writer
MAX_CDC_CHUNK = 262144  # limit: of a chunk in a "cdc" file (the cutter's largest maximum)
SIV_SIZE = 16  # AES-SIV's synthetic IV, in front of every sealed chunk
MAX_SEALED = SIV_SIZE + MAX_CHUNK + MAX_CHUNK // 64 + 1024  # limit: zlib's worst case, padded
MAX_SIZE = 1 << 40  # limit: plaintext bytes of a whole file
_MANIFEST = struct.Struct(">QI32s")  # exact size, chunk count, SHA-256 of the chunks' SIVs
MANIFEST_SIZE = SIV_SIZE + _MANIFEST.size
_RECORD = struct.Struct(">I")
# A v2 file ends in zero bytes up to a multiple of padding_unit(its length so far): consecutive
# versions of a file then usually have the same length, and `git gc`, which pairs the versions
# of a path for deltas in order of size, pairs each with its neighbour in history (bench/).
PAD_MIN_SHIFT, PAD_MAX_SHIFT, PAD_SHIFT = 9, 16, 4
# A preset dictionary for every chunk's zlib stream: 32 KiB of the structure of a Pulumi
# checkpoint as SST writes it (keys, indentation, resource types, URN and ARN shapes; app
# "sst-app", stage "dev"), made by bench/pulumi_state.py (`zdict` there) with every run of 16 or
# more id-like characters removed. Small chunks compress about a third smaller with it than
# without (bench/README.md). Part of the format: examples/recover.py carries the same bytes
# (SHA-256 in SECURITY.md). Stored zlib-compressed, base64.
ZDICT_V2 = zlib.decompress(
    binascii.a2b_base64(
        "eNrtnVtz27YSgN/zKzqcPJ2pGNwJ4s25np5J2rTmycxJ7PHQEiyzlkiVF6Vqx//9LEhd7FoiJduiJRkZJpapJQhigd0F"
        "9iNyPtCZo374+8UPDX8ckHL+PnHicKhP4POJc+L8CP/mk9H09yzL3fB75r4uulc6P3GunR/3qNTaQq9fbPbN9fI6OkmR"
        "j4q8vsGdMI1N/eGHgiqqQTg874WqyDrfdZZ3iMKEMi486SNM1EURd/MoiVVNszjdpKePL0PChSm4TnJW3M/Qck2yUTxO"
        "rvTR7dqGo6gf5vp7OLlR4+kjPNbjDMIs/5T0ootI98y9CSKig+AgARKKUDhcJiTyyNe6YtJkoG9WPQqH6nZt6q7OkiLt"
        "6jfQsv8Os8umtlpIH0d/mbtiwnzOec0lY51m0BKm5Jcfj4J3x0HdDXQ8jtIkHuo4bxzOzjhMo/DcjvyHjfy6Hpr0+1Hc"
        "f5PEF1G/WR8g/j5Jh6FRnRPoP/OGJzUXfEiTYlR2u3vVUOdhv6nTdi919yorhk1yqR5Hpqv+1GuSNCP3v6MeGIhbA5fQ"
        "AElFmcLUpdzH1PvqbGRXR2FadXyngME8KgbFMFI9PVYK1N0JR6PyQznK388sjDoqelHCuLOqzDQZRz2d1pY6PTmTzcpb"
        "gMxFWAzyM3EmxBlRq+yI0+QHupdRrrt5kZYj9dtpTctehnFvUFa2Vmyoh0k6mdqgWsmpdayXKeI8GjaKGRnwfE1it03Y"
        "t9ONekA31bd7lexgFIAvwFIhz8UUSy5WuQNnuKY3ebFGdZZr1HShtfrnb9DuSv2c5NHFhIlVFe4WWZ6YgXkRDjK9QsgY"
        "PXPPm0U79x9Bs75e/TjOw+7V/NsOiDrrqgYGvBcgaFihuOcKTxBvQ9XgACOjGspdhhiWtDXVvJxGCq/M+PicDKLupDw/"
        "/agaFZanxSp9RXX2c67N2gqsujiKm+POs7Op3SqNTb0DMv51teOpG+Wjqp6Vm/5SxTiVZyYQcsGg7WCv8tnQw3JtrIH5"
        "+htIv7u4AGtYCR8NBsn3Su6otOelELh3qt7qgc71L+e/l8JGAk5+jLJ85vLNqathBoLddDKanuhN4JmS3rn6oPOf4L4n"
        "zqk5/ZuuQrdp8bNYEUpU6l/Vlf88d3p9er1O3Ok8/tTBqrBlFdZNj8rRXDuHiNeYZe1QoEbhMHYbCzhchn0s6PYCtfUc"
        "4ZNHafPBsF409bCgZh89p/l7DMNU5wqCBniiIfMeLaxZFL4LgQ2DJg4QURwpjFzkC07RZuoRAWaK+Ap7rk8JQqRF9ZSh"
        "TZYNX0GTgWHKdao+zz+1FNisuP3jhTWnDzTHs8pCk8G0DPozTPOdra8BQrMoXVQrZnj9Nap7P9Bay1IE14mFg0I3r3w0"
        "1K7qYdHoUqe5WRYB6TGGvrjvSx6yQ7CZnDJhJqeCE474djzpJtb3yX3ptL/WLyZU/fWhnnQfTbVp6SoAVupNmIeDpM/k"
        "o64QVKXvgiv1O4QFyCsXBaUrGaU+3kA/HhxmTZEgxalLsEdlm/qpXCl9dV7+9oVMT38hrfnRJfdux4lWt23MMyUwIXsL"
        "7ixNJrXPXD1Z2G9OVVSdeDSa9mejlibPUhpIKLxsNtM7nzDNV049nQc3rPnezagbDsO/ktgkOrrQq9a4oMg6OjThxfqX"
        "XiYZjNmvSawrN/iVHv36+jj48P5//zkO3jfPjesdbH+a/JpXzNntHtIcM0Fk1bwus0Y+Tscmedert+23DeRFWC2pzK65"
        "Z87rdF8ySmD9sacYNhklnxEu8fYWKtZ2yU8eX81NSK0F/4dtro/GqnH30GhsX739Ipn4GiKdYsT8Rw3HZsXvQECGcQd7"
        "JiGGfMWISzgh1N9ARbjUsDQzHkJdz8TLslUVvVzAJ6/mlMlCf+2EZavu305odiehXO/7wnQo2P0yBItsNNgc89GdnVk3"
        "N00Qk1tjdxZ5a2c0yS+TmLqYOGtlsAmyEM4uQTht4XcrVt92GL9b1HgJfveQx1mO3y038DuL30mJsS8sfmfxu+eO37EO"
        "lgHmEDkrzF0qKWsHv2uKmC1/t8/83d7OFyrs4JfU9CaODpS/MyMe5sqmeV0fY4HIBqrxy9m2rxBWnINqCJHC8neWvyvp"
        "qrsM1i0y69dCp5Mp0fUHaFR3dTTWn3SWhX09J70+F/mM/bIQntWjJfGWvDLhBRhcIzEmWHqMcrFtEq/JJT43Em//fOhN"
        "FuSoN4xijg8UxIODB+bND18R7CLmg01cXzsmdsUBwYohRalRroelBfEsiFeBePOE9M6AeJbDu6cfhVkmCTBV2FPcdxH1"
        "pedvn8NrsL3PCcPbR0N9M+dfqZIcKITnmfcFEFcUQ6QJzSux2Ew7EKWadw2oQsSlDAnOdgPCm6qtiYyzTJ5l8p6SyZtn"
        "6XaNyZtXzDJ588Vzy+TVhVoYGU9vFvS5ItyVtMoHbJvJa/DPlsg7NNd/I78YDQYwujk9VCTPrEF5AWJmFRATmL0gxL0N"
        "1qBkB5cpNtAyMvuueJxbJM8ieSvT1Zi0QuTFSU//noHR+XM9Ig9bIs9uiGc3xPu0pn3fVSKPEul5DFkizxJ5z5zIM6l7"
        "FJDy3WTGXCExZqgVIq8pYrZI3l5vibev84WKPzjKMp1nnB0kksfK1REY7yUtiTyGN93YhwYEKcIUl670KZXMInkWySsx"
        "qzv7pK0itsCJZobZ+pj0343hJtkc5Lq9H5tl8qwiLZR3ByYgHeSbZDThxghzQaT0tg3lNTnF5wXl7aMXvbtBE+eHSeWZ"
        "pACox2BTCiFXCsrEBvEnGFAD60ijHuq7EvlUMEvlWSpvR6k8LCyWd2+8HZebr09nmj7iQrS1PR7nlsvbT1N9M+9/HOWa"
        "i8PE8kA5EGhiCDSleWMXS+5zvtE6DmJGtxSb5UWOfcl2BMurtGapvBr2w1J5u0DldWGsp+FgJ8G8ed0smzdfRbdsXkO8"
        "ZbYjholv6RGwkBS3wObV+2iL5h2a+18kGt8m3Yx7B8vlsfI/NPNAO4oI1/M9shq8WLr1hUEvpVlHpNT1kMeQt0tcXqW9"
        "pga3lN59nMIjUHqIsBYxPWQxPYvpLQ3TFzvNzSPSfdo7b1Hp5dvnPeShVu2gt8zu7yqvxySEHcTyepbXe/Y76HmGq6re"
        "QkbCpRRxStrg9erDaAvr7TWs19Ik4v+a2BCY"
    )
)


@dataclass(frozen=True)
class FileKey:
    """The secret a file is sealed under: the vault's data key (age) or a Fernet key."""

    key_id: str
    cipher: str
    secret: bytes

    def fingerprint_key(self) -> bytes:
        return _hkdf(self._ikm(), b"", b"sst-vault/1 fingerprint")

    def _ikm(self) -> bytes:
        if self.cipher == CIPHER_FERNET:
            import base64

            return base64.urlsafe_b64decode(self.secret)
        return self.secret


@dataclass(frozen=True)
class Header:
    """The clear, authenticated header of a vault file."""

    v: int
    app: str
    stage: str
    kind: str
    serial: int
    key_id: str
    writer: str
    time: str
    cipher: str
    compression: str
    salt: str  # hex, fresh for every write
    fingerprint: str  # keyed HMAC-SHA-256 of the plaintext: "unchanged" without decrypting
    size: int  # v1: plaintext length in bytes; v2: rounded up to a multiple of SIZE_GRANULE
    chunking: str = ""  # v2 only: CHUNKING_CDC or CHUNKING_FIXED

    def encode(self) -> bytes:
        fields = asdict(self)
        if self.v == V1:
            del fields["chunking"]
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def fingerprint_mac(key: FileKey) -> hmac.HMAC:
    """An HMAC to feed plaintext to; its hexdigest() is `fingerprint` of what was fed."""
    return hmac.new(key.fingerprint_key(), digestmod=hashlib.sha256)


def fingerprint(key: FileKey, chunks: Iterator[bytes] | bytes) -> str:
    """Keyed fingerprint of plaintext; equal plaintexts under one key give equal values."""
    mac = hmac.new(key.fingerprint_key(), digestmod=hashlib.sha256)
    if isinstance(chunks, bytes):
        mac.update(chunks)
    else:
        for chunk in chunks:
            mac.update(chunk)
    return mac.hexdigest()


def iter_file(handle: BinaryIO, size: int = _READ_SIZE) -> Iterator[bytes]:
    while chunk := handle.read(size):
        yield chunk


# --- writing ------------------------------------------------------------------------------


def seal(
    source: BinaryIO,
    out: BinaryIO,
    key: FileKey,
    *,
    app: str,
    stage: str,
    kind: str,
    serial: int,
    writer: str,
    now: datetime | None = None,
    randbytes: Callable[[int], bytes] = os.urandom,
    level: int = COMPRESSION_LEVEL,
    fingerprint: str | None = None,
    size: int | None = None,
    workers: int = 1,
    version: int = FORMAT_VERSION,
    chunking: bool = True,
) -> Header:
    """Encrypt seekable `source` into `out`. Reads `source` twice: fingerprint, then body.

    `version` 2 (the default) writes content-defined chunks sealed deterministically, or with
    `chunking=False` fixed-size chunks under a fresh random key; `version` 1 is kept for tests
    and vectors only. v2 needs `out` seekable (the manifest is written last, in front).

    A caller that already read `source` once passes its `fingerprint` and `size` to skip the
    first pass. Either way the body pass re-hashes what it encrypts and raises
    `ChangedWhileReading` when the passes disagree (SST wrote meanwhile). `level` is zlib's
    compression level, a writer setting only: every level decodes the same. `workers` > 1
    compresses on that many threads (chacha20-poly1305 only; the bytes differ, the stream is
    equally valid zlib).
    """
    fp_key = key.fingerprint_key()
    if fingerprint is None or size is None:
        source.seek(0)
        fp_mac = hmac.new(fp_key, digestmod=hashlib.sha256)
        size = 0
        for chunk in iter_file(source):
            fp_mac.update(chunk)
            size += len(chunk)
        fingerprint = fp_mac.hexdigest()
    if version not in (FORMAT_VERSION, V1):
        raise ValueError(f"cannot write format version {version}")
    # The fields both versions share; the time is when the file is sealed.
    common = {
        "app": app,
        "stage": stage,
        "kind": kind,
        "serial": serial,
        "key_id": key.key_id,
        "writer": writer,
        "time": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "fingerprint": fingerprint,
    }
    if version == FORMAT_VERSION:
        if size > MAX_SIZE:
            raise RefusedError(f"the file is larger than {MAX_SIZE} bytes", None)
        header = Header(
            v=FORMAT_VERSION,
            cipher=CIPHER_SIV,
            compression=COMPRESSION_V2,
            salt="" if chunking else randbytes(SALT_SIZE).hex(),
            size=rounded_size(size),
            chunking=CHUNKING_CDC if chunking else CHUNKING_FIXED,
            **common,
        )
    else:
        header = Header(
            v=V1,
            cipher=key.cipher,
            compression="zlib",
            salt=randbytes(SALT_SIZE).hex(),
            size=size,
            **common,
        )
    raw = header.encode()
    out.write(_PREFIX.pack(MAGIC, header.v, len(raw)))
    out.write(raw)
    source.seek(0)
    check = hmac.new(fp_key, digestmod=hashlib.sha256)
    read = 0
    if header.v == FORMAT_VERSION:
        exact = _seal_v2(source, out, key, header, raw, size, check, workers)
        if exact != size or not hmac.compare_digest(check.hexdigest(), header.fingerprint):
            raise ChangedWhileReading(
                "the file changed while it was being encrypted", "wait for SST to finish and retry"
            )
        return header

    def plaintext() -> Iterator[bytes]:
        nonlocal read
        for chunk in iter_file(source):
            check.update(chunk)
            read += len(chunk)
            yield chunk

    if key.cipher == CIPHER_FERNET:
        _seal_fernet(plaintext(), out, key, raw, now, level, size)
    else:
        _seal_stream(plaintext(), out, _file_key(key, header, raw), level, workers, size)
    if read != size or not hmac.compare_digest(check.hexdigest(), header.fingerprint):
        raise ChangedWhileReading(
            "the file changed while it was being encrypted", "wait for SST to finish and retry"
        )
    return header


class ChangedWhileReading(RefusedError):
    """The source changed between the two passes of `seal` (SST wrote meanwhile)."""


def _isal_zlib(size: int) -> ModuleType | None:
    """ISA-L's zlib module for a file of `size` bytes, or None where the stdlib's serves."""
    if size < _ISAL_MIN or os.environ.get("SST_VAULT_NO_ISAL", "") not in ("", "0"):
        return None
    try:
        from isal import isal_zlib
    except ImportError:  # optional: not every platform has a wheel of it
        return None
    return isal_zlib


def _compressed(plain: Iterator[bytes], level: int, size: int) -> Iterator[bytes]:
    fast = _isal_zlib(size)
    # ISA-L has levels 0-3; its 2 is both faster and smaller than its 3 on Pulumi JSON.
    comp = fast.compressobj(2 if level < 0 else min(level, 2)) if fast else zlib.compressobj(level)
    for chunk in plain:
        data = comp.compress(chunk)
        if data:
            yield data
    yield comp.flush()


def _compressed_parallel(plain: Iterator[bytes], level: int, workers: int) -> Iterator[bytes]:
    """One zlib stream, its blocks compressed on `workers` threads (pigz's method).

    Each input piece becomes deflate blocks ended by a sync flush (byte-aligned, so pieces
    concatenate), primed with the previous piece's last 32 KiB as dictionary so little ratio is
    lost; an empty final block and the Adler-32 of the whole close the stream. Any zlib reader
    decodes it like a stream written in one go. zlib releases the GIL while compressing.
    """
    from vault.threads import ordered_map

    def block(job: tuple[bytes, bytes]) -> bytes:
        piece, primer = job
        comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=primer or b"")
        return comp.compress(piece) + comp.flush(zlib.Z_SYNC_FLUSH)

    adler = zlib.adler32(b"")

    def primed() -> Iterator[tuple[bytes, bytes]]:
        nonlocal adler
        primer = b""
        for piece in plain:
            adler = zlib.adler32(piece, adler)
            yield piece, primer
            primer = (primer + piece if len(piece) < _WINDOW else piece)[-_WINDOW:]

    flevel = 0 if level == 1 else 1 if 2 <= level <= 5 else 2 if level in (-1, 6) else 3
    cmf, flg = 0x78, flevel << 6
    flg |= (31 - (cmf * 256 + flg) % 31) % 31
    yield bytes((cmf, flg))
    yield from ordered_map(block, primed(), workers=workers, ahead=workers, name="sst-vault-zlib")
    yield zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS).flush() + adler.to_bytes(4, "big")


def _seal_stream(
    plain: Iterator[bytes], out: BinaryIO, file_key: bytes, level: int, workers: int, size: int
) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    aead = ChaCha20Poly1305(file_key)
    buffer = bytearray()
    counter = 0
    # One ISA-L thread outruns the stdlib's zlib on several: threads only help the latter.
    if workers <= 1 or _isal_zlib(size):
        compressed = _compressed(plain, level, size)
    else:
        compressed = _compressed_parallel(plain, level, workers)
    for data in compressed:
        buffer += data
        # Keep at least one byte back so the last chunk is never empty unless all is empty.
        while len(buffer) > CHUNK_SIZE:
            out.write(aead.encrypt(_nonce(counter, last=False), bytes(buffer[:CHUNK_SIZE]), None))
            del buffer[:CHUNK_SIZE]
            counter += 1
    out.write(aead.encrypt(_nonce(counter, last=True), bytes(buffer), None))


def _seal_fernet(
    plain: Iterator[bytes],
    out: BinaryIO,
    key: FileKey,
    raw_header: bytes,
    now: datetime | None,
    level: int,
    size: int,
) -> None:
    from cryptography.fernet import Fernet

    body = hashlib.sha256(raw_header).digest() + b"".join(_compressed(plain, level, size))
    fernet = Fernet(key.secret)
    at = int((now or datetime.now(UTC)).timestamp())
    out.write(fernet.encrypt_at_time(body, at))


def _nonce(counter: int, last: bool) -> bytes:
    if counter >= 1 << 88:
        raise OverflowError("stream too long")
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)


def _file_key(key: FileKey, header: Header, raw_header: bytes) -> bytes:
    info = b"sst-vault/1 payload" + hashlib.sha256(raw_header).digest()
    return _hkdf(key.secret, bytes.fromhex(header.salt), info)


# --- format v2: chunks ---------------------------------------------------------------------


def rounded_size(size: int) -> int:
    """The size a v2 header shows in clear: the exact one is sealed in the manifest."""
    return -(-size // SIZE_GRANULE) * SIZE_GRANULE


def _context(header: Header) -> bytes:
    return json.dumps([header.app, header.stage, header.kind], separators=(",", ":")).encode()


def _v2_keys(key: FileKey, header: Header) -> tuple[bytes, bytes]:
    """(chunk key, manifest key): AES-SIV keys bound to the file's app, stage and kind."""
    ikm, context = key._ikm(), _context(header)
    salt = bytes.fromhex(header.salt)  # empty (HKDF's default salt) unless chunking is off
    chunk_key = _hkdf(ikm, salt, b"sst-vault/2 chunk key " + context, 64)
    manifest_key = _hkdf(ikm, b"", b"sst-vault/2 manifest key " + context, 64)
    return chunk_key, manifest_key


def _cut_seed(key: FileKey, header: Header) -> int:
    """The cutter's secret: without it nobody can predict where a chunk ends."""
    raw = _hkdf(key._ikm(), b"", b"sst-vault/2 cut seed " + _context(header), 8)
    seed = int.from_bytes(raw) >> 1  # 63 bits: pyfastcdc computes seed << 1 in 64 bits
    return seed or 1  # pyfastcdc reads 0 as "its public default table"


# How chunks are compressed. "cdc" chunks of files up to CDC_LARGE: with the stdlib's zlib at
# level 9 on every platform: the small chunks need its thorough search of the preset dictionary
# (ISA-L's level 2 compresses them about 15% larger), and an unchanged chunk must compress to
# the same bytes at every commit, or git stores it again, so no machine may differ. Above
# CDC_LARGE, where speed matters more than a deploy's cost, and "fixed" pieces (1 MiB, under a
# fresh key: nothing to keep equal): with ISA-L's zlib (level 2) where installed, everywhere
# the `isal` dependency has wheels, else the stdlib's at level 6; above CDC_LARGE a team whose
# machines differ pays one copy of the state each time the writer's kind changes. Readers
# decode any.
CHUNK_LEVEL, CHUNK_LEVEL_LARGE_ISAL, CHUNK_LEVEL_LARGE_ZLIB = 9, 2, 6


def _chunk_compressor(size: int, chunking: str) -> Callable[[bytes | memoryview], bytes]:
    # "fixed" pieces are 1 MiB, sealed under a fresh key: level 9 would buy them nothing.
    thorough = size <= CDC_LARGE and chunking == CHUNKING_CDC
    codec = None if thorough else _isal_zlib(MAX_SIZE)
    if codec is not None:
        isal = codec

        def compress(piece: bytes | memoryview) -> bytes:
            comp = isal.compressobj(CHUNK_LEVEL_LARGE_ISAL, zdict=ZDICT_V2)
            return comp.compress(piece) + comp.flush()

        return compress
    # Loading a 32 KiB dictionary costs about as much as compressing a small chunk: load it
    # once and copy the primed state per chunk (the same bytes as a fresh compressor's).
    primed = zlib.compressobj(CHUNK_LEVEL if thorough else CHUNK_LEVEL_LARGE_ZLIB, zdict=ZDICT_V2)

    def compress_stdlib(piece: bytes | memoryview) -> bytes:
        comp = primed.copy()
        return comp.compress(piece) + comp.flush()

    return compress_stdlib


def padding_unit(length: int) -> int:
    """What a v2 file of `length` bytes (through its last record) is padded to a multiple of.

    A power of two: 512 up to 8 KiB, then between 1/16 and 1/8 of the length, at most 64 KiB.
    A deploy moves the length by a few hundred bytes whatever the state's size, so this is
    coarse enough that it rarely moves a file into another unit, and small next to the file
    (zeros cost git nothing once packed, but `git add` stores them raw until then).
    """
    return 1 << min(PAD_MAX_SHIFT, max(PAD_MIN_SHIFT, length.bit_length() - PAD_SHIFT))


def padding(length: int) -> int:
    """How many zero bytes follow the last record of a v2 file of `length` bytes."""
    return -length % padding_unit(length)


def _inflater(size: int) -> ModuleType:
    return _isal_zlib(size) or zlib


class _Source:
    """`source` as the cutter reads it, feeding `check` (the fingerprint) on the way."""

    def __init__(self, source: BinaryIO, check: hmac.HMAC) -> None:
        self.source, self.check, self.read_bytes = source, check, 0

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.check.update(data)
        self.read_bytes += len(data)
        return data


def _pieces(
    reader: _Source, key: FileKey, header: Header, size: int
) -> Iterator[bytes | memoryview]:
    if header.chunking == CHUNKING_FIXED:
        while piece := reader.read(FIXED_CHUNK):
            yield piece
        return
    import warnings

    with warnings.catch_warnings():  # its pure-Python fallback warns; it cuts the same
        warnings.simplefilter("ignore")
        from pyfastcdc import FastCDC

    avg, low, high = (
        (CDC_LARGE_AVG, CDC_LARGE_MIN, CDC_LARGE_MAX)
        if size > CDC_LARGE
        else (CDC_AVG, CDC_MIN, CDC_MAX)
    )
    cutter = FastCDC(avg, min_size=low, max_size=high, seed=_cut_seed(key, header))
    for chunk in cutter.cut_stream(reader):
        yield chunk.data  # valid until the next one: used before asking for it


def _seal_v2(
    source: BinaryIO,
    out: BinaryIO,
    key: FileKey,
    header: Header,
    raw_header: bytes,
    size: int,
    check: hmac.HMAC,
    workers: int,
) -> int:
    """Write the manifest slot, the chunk records and the padding; fill the slot last.

    Returns the plaintext bytes read.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    chunk_key, manifest_key = _v2_keys(key, header)
    siv = AESSIV(chunk_key)
    compress = _chunk_compressor(size, header.chunking)

    def seal_one(piece: bytes | memoryview) -> bytes:
        return siv.encrypt(compress(piece), None)

    reader = _Source(source, check)
    manifest_at = out.tell()
    out.write(bytes(MANIFEST_SIZE))
    ivs = hashlib.sha256()
    count = 0
    if workers > 1 and size > _THREAD_MIN:
        sealed_chunks = _parallel(seal_one, _pieces(reader, key, header, size), workers)
    else:
        sealed_chunks = map(seal_one, _pieces(reader, key, header, size))
    for sealed in sealed_chunks:
        out.write(_RECORD.pack(len(sealed)) + sealed)
        ivs.update(sealed[:SIV_SIZE])
        count += 1
    end = out.tell()
    pad = padding(end - manifest_at + _PREFIX.size + len(raw_header))
    out.write(bytes(pad))
    end = out.tell()
    manifest = _MANIFEST.pack(reader.read_bytes, count, ivs.digest())
    out.seek(manifest_at)
    out.write(AESSIV(manifest_key).encrypt(manifest, [raw_header]))
    out.seek(end)
    return reader.read_bytes


def _parallel(
    work: Callable[[bytes], bytes], pieces: Iterator[bytes | memoryview], workers: int
) -> Iterator[bytes]:
    """`map(work, pieces)` on threads, in order, in batches of about 1 MiB (zlib drops the GIL)."""
    from vault.threads import ordered_map

    def batches() -> Iterator[list[bytes]]:
        batch: list[bytes] = []
        filled = 0
        for piece in pieces:
            batch.append(bytes(piece))
            filled += len(piece)
            if filled >= _READ_SIZE:
                yield batch
                batch, filled = [], 0
        if batch:
            yield batch

    def batch_work(batch: list[bytes]) -> list[bytes]:
        return [work(piece) for piece in batch]

    for done in ordered_map(
        batch_work, batches(), workers=workers, ahead=2 * workers, name="sst-vault-seal"
    ):
        yield from done


def _open_v2(
    handle: BinaryIO, key: FileKey, header: Header, raw_header: bytes, path: Path | str
) -> Iterator[list[bytes]]:
    """Verify the manifest, then yield the chunks' plaintexts in batches; check the chunk list
    at the end.

    Nothing is read or allocated by an unauthenticated size beyond the named limits; the output
    never exceeds the manifest's (authenticated) size. Callers discard the output on an error.
    Coarse-chunked files (above CDC_LARGE) are decoded on two threads, batch by batch, and
    handed on in order.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    chunk_key, manifest_key = _v2_keys(key, header)
    sealed = handle.read(MANIFEST_SIZE)
    if len(sealed) != MANIFEST_SIZE:
        raise TamperedError(path, "truncated", "restore it from git")
    try:
        manifest = AESSIV(manifest_key).decrypt(sealed, [raw_header])
    except InvalidTag:
        raise TamperedError(
            path, "authentication failed (edited header or manifest)", "restore it from git"
        ) from None
    size, count, digest = _MANIFEST.unpack(manifest)
    if size > MAX_SIZE or count > size or (size and not count) or rounded_size(size) != header.size:
        raise TamperedError(path, "manifest out of range", "restore it from git")
    # A tight bound also makes inflating faster: the decoder sizes its buffer from it.
    largest = MAX_CDC_CHUNK if header.chunking == CHUNKING_CDC else MAX_CHUNK
    records = _Records(handle, count, _PREFIX.size + len(raw_header) + MANIFEST_SIZE, largest, path)
    decode = _BatchDecoder(AESSIV(chunk_key).decrypt, _inflater(size), min(size, largest), path)
    # Authenticating holds the GIL (cryptography's AES-SIV does not release it), inflating
    # does not: this thread authenticates, and large files inflate on two threads meanwhile.
    authenticated = (decode.authenticate(batch) for batch in records.batches())
    if size > CDC_LARGE:
        pieces = _decoded_in_parallel(decode.inflate, authenticated)
    else:
        pieces = (decode.inflate(batch) for batch in authenticated)
    remaining = size
    # Closed on every exit, not when this frame is freed: an error raised here keeps the
    # frame alive in its traceback, and with it the decoding threads and their batches.
    with contextlib.closing(pieces):
        for batch in pieces:
            produced = sum(map(len, batch))
            if produced > remaining:
                raise TamperedError(path, "corrupt compressed chunk", "restore it from git")
            remaining -= produced
            yield batch
    # The padding: exactly padding(length) zero bytes (at most 64 KiB), then the end.
    pad = padding(records.length)
    zeros = records.source.read(pad)
    if len(zeros) != pad:
        raise TamperedError(path, "truncated (padding)", "restore it from git")
    if zeros.count(0) != pad:
        raise TamperedError(path, "data after the last chunk", "restore it from git")
    if records.source.read(1):
        raise TamperedError(path, "data after the last chunk", "restore it from git")
    if remaining or not hmac.compare_digest(records.ivs.digest(), digest):
        raise TamperedError(
            path,
            "the chunks are not the ones sealed (reordered, dropped, duplicated or spliced)",
            "restore it from git",
        )


class _Records:
    """The `count` records of a v2 body, framing-checked, in batches for `_BatchDecoder`.

    Tracks the file's length so far (for the padding) and hashes each record's SIV in order
    (for the manifest's digest).
    """

    # A batch ends at this many sealed bytes, or at as many records as could inflate to
    # BATCH_OUTPUT: big enough that handing it to a thread is cheap, small enough that the few
    # batches in flight stay within a few MiB, whatever a member's writer put in the file.
    BATCH_BYTES, BATCH_OUTPUT = 256 * 1024, 8 * 1024 * 1024

    def __init__(
        self, handle: BinaryIO, count: int, length: int, largest: int, path: Path | str
    ) -> None:
        self.source = _BlockReader(handle)  # the rest of the file: read the padding from it
        self.count, self.length, self.path = count, length, path
        self.most = max(1, self.BATCH_OUTPUT // largest)  # records per batch
        self.ivs = hashlib.sha256()

    def batches(self) -> Iterator[list[bytes]]:
        read, path = self.source.read, self.path
        batch: list[bytes] = []
        batched = 0
        for _ in range(self.count):
            prefix = read(_RECORD.size)
            if len(prefix) != _RECORD.size:
                raise TamperedError(path, "truncated (a chunk is missing)", "restore it from git")
            (record_size,) = _RECORD.unpack(prefix)
            if not record_size:  # the padding, where the manifest promised another record
                raise TamperedError(path, "truncated (a chunk is missing)", "restore it from git")
            if not SIV_SIZE < record_size <= MAX_SEALED:
                raise TamperedError(path, "malformed chunk length", "restore it from git")
            record = read(record_size)
            if len(record) != record_size:
                raise TamperedError(path, "truncated", "restore it from git")
            self.length += _RECORD.size + record_size
            self.ivs.update(record[:SIV_SIZE])
            batch.append(record)
            batched += record_size
            if batched >= self.BATCH_BYTES or len(batch) >= self.most:
                yield batch
                batch, batched = [], 0
        if batch:
            yield batch


class _BlockReader:
    """`handle.read(n)` served from blocks of BLOCK bytes: a system call per block, not per read.

    Framing reads two small pieces per record. Each system call hands the GIL to the decoding
    threads, and winning it back cost the framing thread far more than the read itself (at
    100 MB, 45 ms of wall time for 8 ms of work). `n` is always bounded by the caller's limits.
    """

    BLOCK = 1024 * 1024

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.data, self.pos = handle, b"", 0

    def read(self, n: int) -> bytes:
        end = self.pos + n
        if end <= len(self.data):
            piece = self.data[self.pos : end]
            self.pos = end
            return piece
        piece, need = self.data[self.pos :], end - len(self.data)
        self.data = self.handle.read(max(need, self.BLOCK))
        self.pos = min(need, len(self.data))
        return piece + self.data[: self.pos]


class _BatchDecoder:
    """Authenticate a batch of records, then inflate it into the chunks' plaintexts.

    Each chunk must be one complete zlib stream of 1 to `bound` bytes; the caller checks the
    running total against the manifest's size before handing anything on.
    """

    def __init__(
        self,
        decrypt: Callable[[bytes, None], bytes],
        codec: ModuleType,
        bound: int,
        path: Path | str,
    ) -> None:
        self.decrypt, self.codec, self.bound, self.path = decrypt, codec, bound, path
        self.errors = (zlib.error, *_isal_errors())

    def authenticate(self, records: list[bytes]) -> list[bytes]:
        """The records' zlib streams, each authenticated (AES-SIV) under the chunk key."""
        from cryptography.exceptions import InvalidTag

        decrypt = self.decrypt
        try:
            return [decrypt(record, None) for record in records]
        except InvalidTag:
            raise TamperedError(
                self.path, "authentication failed (a chunk was edited)", "restore it from git"
            ) from None

    def inflate(self, streams: list[bytes]) -> list[bytes]:
        """The plaintexts of authenticated zlib streams, each checked complete and in bounds."""
        decompressobj, bound = self.codec.decompressobj, self.bound
        pieces = []
        for comp in streams:
            try:
                inflate = decompressobj(zdict=ZDICT_V2)
                piece = inflate.decompress(comp, bound + 1)
                complete = inflate.eof and not inflate.unused_data and not inflate.unconsumed_tail
            except self.errors:
                complete = False
            if not complete or not piece or len(piece) > bound:
                raise TamperedError(self.path, "corrupt compressed chunk", "restore it from git")
            pieces.append(piece)
        return pieces


def _decoded_in_parallel(
    decode: Callable[[list[bytes]], list[bytes]], batches: Iterator[list[bytes]], workers: int = 2
) -> Iterator[list[bytes]]:
    """`map(decode, batches)` on `workers` threads, in order, a few batches ahead at most.

    Inflating releases the GIL, so batches inflate on both cores while the caller frames and
    authenticates the next ones and writes what came before. On an error, or once the caller
    closes the iterator early, nothing more starts and the threads end (`threads.ordered_map`).
    """
    from vault.threads import ordered_map

    _keep_freed_memory()
    return ordered_map(decode, batches, workers=workers, ahead=2 * workers, name="sst-vault-open")


_MALLOC_TUNED = threading.Event()
# glibc's mallopt parameters and values for `_keep_freed_memory`.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_FREED, _MMAP_ABOVE = 64 * 1024 * 1024, 4 * 1024 * 1024


def _keep_freed_memory() -> None:
    """Have glibc keep freed chunk buffers for reuse instead of handing them back to the kernel.

    Every decoded chunk (64-256 KiB above CDC_LARGE) is a fresh allocation that glibc serves
    with mmap or trims off the heap once freed, so its pages are faulted in and zeroed again,
    and the two decoding threads queue on the process's memory map while they are: opening
    100 MB took about 40 ms more CPU that way (bench/README.md). Raising the two thresholds
    keeps at most 64 MiB of freed memory in the process. Process-wide, done once, glibc only;
    elsewhere this does nothing.
    """
    if _MALLOC_TUNED.is_set() or sys.platform != "linux":
        return
    _MALLOC_TUNED.set()
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
        mallopt(_M_MMAP_THRESHOLD, _MMAP_ABOVE)
        mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED)
    except (ImportError, OSError, ValueError, AttributeError):
        return


def _isal_errors() -> tuple[type[BaseException], ...]:
    if "isal" not in sys.modules:
        return ()
    from isal.isal_zlib import error

    return (error,)


# --- reading ------------------------------------------------------------------------------


def read_header(handle: BinaryIO, path: Path | str) -> tuple[Header, bytes]:
    """Parse the clear header of untrusted bytes; nothing here is verified yet."""
    prefix = handle.read(_PREFIX.size)
    if len(prefix) < len(MAGIC) or not prefix.startswith(MAGIC):
        raise NotAVaultFileError(path, "no sst-vault signature", "is this file from sst-vault?")
    if len(prefix) < _PREFIX.size:
        raise TamperedError(path, "truncated header", "restore it from git")
    _, version, length = _PREFIX.unpack(prefix)
    if version > FORMAT_VERSION:
        raise NewerFormatError(
            path, f"format version {version}", "upgrade sst-vault to read this file"
        )
    if version not in (V1, FORMAT_VERSION) or length > MAX_HEADER_SIZE:
        raise TamperedError(path, "malformed header", "restore it from git")
    raw = handle.read(length)
    if len(raw) != length:
        raise TamperedError(path, "truncated header", "restore it from git")
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or not _header_fields_ok(data, version):
            raise ValueError
        header = Header(**data)
    except (ValueError, TypeError, RecursionError):
        raise TamperedError(path, "malformed header", "restore it from git") from None
    return header, raw


_TEXT_FIELDS = ("app", "stage", "kind", "key_id", "writer", "time")
_V1_FIELDS = frozenset(f.name for f in fields(Header)) - {"chunking"}
_V2_FIELDS = frozenset(f.name for f in fields(Header))
_MAX_TEXT = 256  # limit: a clear text field (names, writer, time)
_MAX_SERIAL = (1 << 63) - 1


def _header_fields_ok(data: dict[str, object], version: int) -> bool:
    """Every clear field present, of its type and in its range, before anything uses one."""
    if set(data) != (_V1_FIELDS if version == V1 else _V2_FIELDS):
        return False

    def is_int(value: object, top: int) -> bool:
        return type(value) is int and 0 <= value <= top

    def is_hex(value: object, digits: int) -> bool:
        return (
            isinstance(value, str)
            and len(value) == digits
            and all(c in "0123456789abcdef" for c in value)
        )

    ok = (
        type(data["v"]) is int
        and data["v"] == version
        and all(isinstance(data[f], str) and len(data[f]) <= _MAX_TEXT for f in _TEXT_FIELDS)
        and is_int(data["serial"], _MAX_SERIAL)
        and is_int(data["size"], MAX_SIZE)
        and is_hex(data["fingerprint"], 64)
    )
    if not ok:
        return False
    if version == V1:
        return (
            data["cipher"] in (CIPHER_STREAM, CIPHER_FERNET)
            and data["compression"] == "zlib"
            and is_hex(data["salt"], 2 * SALT_SIZE)
        )
    fixed = data["chunking"] == CHUNKING_FIXED
    return (
        data["cipher"] == CIPHER_SIV
        and data["compression"] == COMPRESSION_V2
        and data["chunking"] in (CHUNKING_CDC, CHUNKING_FIXED)
        and (is_hex(data["salt"], 2 * SALT_SIZE) if fixed else data["salt"] == "")
        and data["size"] % SIZE_GRANULE == 0  # type: ignore[operator]
    )


def open_(
    handle: BinaryIO,
    out: BinaryIO,
    key: FileKey,
    path: Path | str,
    *,
    app: str,
    stage: str,
    kind: str,
    check_fingerprint: bool = True,
) -> Header:
    """Verify and decrypt a vault file into `out` (a temporary file; the caller replaces).

    `out` may hold partial plaintext when this raises: callers must discard it.
    `check_fingerprint=False` skips recomputing the header's fingerprint over the plaintext
    (a keyed SHA-256 pass, a quarter of the work of opening a large state): the header and
    every plaintext byte are authenticated without it, so only a key holder's faulty writer
    could make it differ. Reading back a file just sealed keeps it (that is the writer check).
    """
    header, raw = read_header(handle, path)
    check_header(header, path, app=app, stage=stage, kind=kind)
    if header.key_id != key.key_id:
        raise WrongKeyError(
            path,
            f"sealed under key id {header.key_id}, this key is {key.key_id}",
            "use the vault's current key (SST_VAULT_KEY) or ask a member to re-add you",
        )
    if header.v == V1 and header.cipher != key.cipher:
        raise TamperedError(path, f"cipher {header.cipher} does not match the vault", None)
    mac = hmac.new(key.fingerprint_key(), digestmod=hashlib.sha256) if check_fingerprint else None
    plain: Iterator[list[bytes]]
    if header.v == FORMAT_VERSION:
        plain = _open_v2(handle, key, header, raw, path)  # decodes on threads of its own
    else:
        if header.cipher == CIPHER_FERNET:
            pieces = _decompressed(_open_fernet(handle, key, raw, path), path, header.size)
        else:
            pieces = _decompressed(
                _open_stream(handle, _file_key(key, header, raw), path), path, header.size
            )
        if header.size > _THREAD_MIN:
            from vault.threads import produced_ahead

            # zlib and the AEAD release the GIL on large buffers: decrypting and inflating
            # on a thread overlaps with the hashing and writing here.
            pieces = produced_ahead(pieces, depth=4, name="sst-vault-reader")
        plain = _one_by_one(pieces)
    write = _batch_writer(out)
    size = 0
    with contextlib.closing(plain):  # on an error, stop the decoding threads before returning
        for batch in plain:
            if mac is not None:
                for piece in batch:
                    mac.update(piece)
            size += sum(map(len, batch))
            write(batch)
    shown = rounded_size(size) if header.v == FORMAT_VERSION else size
    if shown != header.size or (
        mac is not None and not hmac.compare_digest(mac.hexdigest(), header.fingerprint)
    ):
        raise TamperedError(path, "content does not match its header", "restore it from git")
    return header


def _one_by_one(pieces: Iterator[bytes]) -> Iterator[list[bytes]]:
    with contextlib.closing(pieces):
        for piece in pieces:
            yield [piece]


def _batch_writer(out: BinaryIO) -> Callable[[list[bytes]], None]:
    """How `open_` hands a batch of plaintext pieces to `out`.

    An output with `write_pieces` (`safefs.AtomicWriter.streaming()`) takes the whole batch
    at once, in one system call and without joining it: at 100 MB that is a few hundred calls
    instead of a few thousand, each of which the writing thread had to win the GIL back for
    from the decoding threads.
    """
    write_pieces = getattr(out, "write_pieces", None)
    if write_pieces is not None:
        return write_pieces  # type: ignore[no-any-return]

    def one_by_one(batch: list[bytes]) -> None:
        for piece in batch:
            out.write(piece)

    return one_by_one


def check_header(header: Header, path: Path | str, *, app: str, stage: str, kind: str) -> None:
    """A file copied to another app, stage or kind must not open there."""
    for name, want in (("app", app), ("stage", stage), ("kind", kind)):
        got = getattr(header, name)
        if got != want:
            raise TamperedError(
                path,
                f"file belongs to {name} {got!r}, not {want!r}",
                "vault files cannot be moved or renamed; restore it from git",
            )


def _open_stream(handle: BinaryIO, file_key: bytes, path: Path | str) -> Iterator[bytes]:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    aead = ChaCha20Poly1305(file_key)
    block = CHUNK_SIZE + TAG_SIZE
    current = handle.read(block)
    counter = 0
    while True:
        following = handle.read(block)
        last = not following
        if len(current) < TAG_SIZE or (not last and len(current) != block):
            raise TamperedError(path, "truncated", "restore it from git")
        try:
            chunk = aead.decrypt(_nonce(counter, last), current, None)
        except InvalidTag:
            raise TamperedError(
                path,
                "authentication failed (edited, truncated or header changed)",
                "restore it from git",
            ) from None
        if last and not chunk and counter > 0:
            raise TamperedError(path, "empty final chunk", "restore it from git")
        yield chunk
        if last:
            return
        current = following
        counter += 1


def _open_fernet(
    handle: BinaryIO, key: FileKey, raw_header: bytes, path: Path | str
) -> Iterator[bytes]:
    from cryptography.fernet import Fernet, InvalidToken

    try:
        body = Fernet(key.secret).decrypt(handle.read())
    except InvalidToken:
        raise TamperedError(path, "authentication failed", "restore it from git") from None
    digest = hashlib.sha256(raw_header).digest()
    if not hmac.compare_digest(body[: len(digest)], digest):
        raise TamperedError(path, "header does not match its content", "restore it from git")
    view = memoryview(body)[len(digest) :]
    for start in range(0, len(view), _READ_SIZE):
        yield bytes(view[start : start + _READ_SIZE])


def _decompressed(chunks: Iterator[bytes], path: Path | str, size: int) -> Iterator[bytes]:
    """The one zlib stream in `chunks`, in steps of at most _READ_SIZE bytes.

    Bounded steps because 64 KiB of zlib can expand to 64 MiB, which must not sit in memory.
    `size` (from the authenticated header) only chooses the decoder; both check the stream's
    Adler-32 and refuse anything before, after or instead of one complete stream.
    """
    if _isal_zlib(size):
        return _inflated_isal(chunks, path)
    return _inflated(chunks, path)


def _inflated(chunks: Iterator[bytes], path: Path | str) -> Iterator[bytes]:
    decomp = zlib.decompressobj()
    try:
        for chunk in chunks:
            data = chunk
            while data:
                out = decomp.decompress(data, _READ_SIZE)
                if out:
                    yield out
                data = decomp.unconsumed_tail
        rest = decomp.flush()
    except zlib.error:
        raise TamperedError(path, "corrupt compressed data", "restore it from git") from None
    if rest:
        yield rest
    if not decomp.eof or decomp.unused_data:
        raise TamperedError(path, "corrupt compressed data", "restore it from git")


def _inflated_isal(chunks: Iterator[bytes], path: Path | str) -> Iterator[bytes]:
    from isal.igzip_lib import DECOMP_ZLIB, IgzipDecompressor, IsalError

    decomp = IgzipDecompressor(flag=DECOMP_ZLIB)
    trailing = False
    try:
        for chunk in chunks:
            if decomp.eof:  # it keeps no unused_data past the end: note it here instead
                trailing = trailing or bool(chunk)
                continue
            out = decomp.decompress(chunk, _READ_SIZE)
            while True:
                if out:
                    yield out
                if decomp.eof or decomp.needs_input:
                    break
                out = decomp.decompress(b"", _READ_SIZE)
    except (IsalError, EOFError):
        raise TamperedError(path, "corrupt compressed data", "restore it from git") from None
    if not decomp.eof or decomp.unused_data or trailing:
        raise TamperedError(path, "corrupt compressed data", "restore it from git")


def open_bytes(
    data: bytes, key: FileKey, path: Path | str, *, app: str, stage: str, kind: str
) -> tuple[Header, bytes]:
    """Convenience for small files and history reads: decrypt to bytes in memory."""
    import io

    out = io.BytesIO()
    header = open_(io.BytesIO(data), out, key, path, app=app, stage=stage, kind=kind)
    return header, out.getvalue()


def seal_bytes(data: bytes, key: FileKey, **meta: object) -> tuple[Header, bytes]:
    import io

    out = io.BytesIO()
    header = seal(io.BytesIO(data), out, key, **meta)  # type: ignore[arg-type]
    return header, out.getvalue()
