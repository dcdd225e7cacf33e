"""Format v2 (DESIGN.md guarantees 1, 7 and 8): content-defined chunks, sealed deterministically.

Library level, real crypto: the vectors in tests/testdata/ (written by make_vectors.py) pin the
format byte for byte; the properties v2 promises (equal chunks seal to equal bytes within a file
and across its versions, nothing equal across stages, kinds or apps, boundaries that depend on
the key, a rounded clear size) and what it refuses (reordered, dropped, duplicated or spliced
chunks, out-of-range clear fields, sizes that do not add up) are checked here. The CLI side
(commit writes v2, v1 upgrades, unchanged files stay byte-identical, the chunking setting) is
in tests/test_format_v2_cli.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import struct
import sys
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vault import envelope
from vault.envelope import FileKey
from vault.errors import TamperedError
from vault.keys import key_id_of

TESTDATA = Path(__file__).parent / "testdata"
ROOT = Path(__file__).parent.parent
_spec = importlib.util.spec_from_file_location("make_vectors", TESTDATA / "make_vectors.py")
vectors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vectors)  # type: ignore[union-attr]

META = {"app": "demo-app", "stage": "prod", "kind": "app"}
NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)  # a fixed header time: equal calls, equal bytes
WHERE = "infra/state/app/prod.json.vault"


def key(seed: int = 1) -> FileKey:
    data_key = hashlib.sha256(b"v2 data key %d" % seed).digest()
    return FileKey(key_id_of(data_key), envelope.CIPHER_STREAM, data_key)


def seal(plain: bytes, k: FileKey | None = None, **meta: object) -> bytes:
    args = {**META, "serial": 3, "writer": "ci@runner", "now": NOW, **meta}
    return envelope.seal_bytes(plain, k or key(), **args)[1]


def open_(blob: bytes, k: FileKey | None = None, **meta: str) -> bytes:
    return envelope.open_bytes(blob, k or key(), WHERE, **{**META, **meta})[1]


def header_of(blob: bytes) -> dict:
    length = struct.unpack(">I", blob[9:13])[0]
    return json.loads(blob[13 : 13 + length])


def state(n: int = 400, changed: int | None = None) -> bytes:
    """Pulumi-like JSON; `changed` edits one resource in the middle."""
    rows = []
    for i in range(n):
        token = hashlib.sha256(b"%d" % (i if i != changed else -i)).hexdigest()
        rows.append(
            f'        {{\n            "urn": "urn:pulumi:prod::demo-app::sst:aws:Function::F{i}",\n'
            f'            "outputs": {{"etag": "{token}", "size": {i * 7}}}\n        }}'
        )
    return ('{\n    "resources": [\n' + ",\n".join(rows) + "\n    ]\n}\n").encode()


# --- vectors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cipher", "kind", "plain"),
    [
        ("vector-v2.vault", "stream", "app", vectors.SMALL),
        ("vector-v2-chunks.vault", "stream", "app", vectors.CHUNKS),
        ("vector-v2-fixed.vault", "stream", "secret", vectors.CHUNKS),
        ("vector-v2-fernet.vault", "fernet", "app", vectors.SMALL),
        ("vector-v2-empty.vault", "stream", "passphrase", b""),
    ],
)
def test_v2_vectors_open_and_the_writer_still_produces_them(monkeypatch, name, cipher, kind, plain):
    """Format v2 is frozen: a change to the KDF, cutter, dictionary or layout shows here.

    Written with the stdlib's zlib (ISA-L, where installed, writes other bytes, same format).
    """
    monkeypatch.setenv("SST_VAULT_NO_ISAL", "1")
    vkey = vectors.fernet_key() if cipher == "fernet" else vectors.stream_key()
    blob = (TESTDATA / name).read_bytes()
    header, got = envelope.open_bytes(
        blob, vkey, name, app=vectors.APP, stage=vectors.STAGE, kind=kind
    )
    assert got == plain
    assert header.v == 2 and header.serial == vectors.SERIAL
    assert header.size == envelope.rounded_size(len(plain))
    options = {"chunking": False} if "fixed" in name else {}
    assert vectors.seal_v2(plain, vkey, kind, **options) == blob


def test_equal_chunks_in_one_file_seal_to_equal_bytes():
    _, records = vectors.records((TESTDATA / "vector-v2-chunks.vault").read_bytes())
    assert len(records) >= 6
    assert len(set(records)) < len(records)  # the repeated run gave repeated records


def test_unchanged_chunks_keep_their_bytes_across_versions():
    before = seal(state(), serial=1)
    after = seal(state(changed=200), serial=2)
    _, old = vectors.records(before)
    _, new = vectors.records(after)
    kept = set(old) & set(new)
    assert len(new) >= 8
    assert len(new) - len(kept) <= 2  # one resource changed: one chunk, two if it straddles
    assert open_(after) == state(changed=200)


@pytest.mark.parametrize(
    "other", [{"stage": "dev"}, {"kind": "secret"}, {"app": "other-app"}], ids=str
)
def test_nothing_is_equal_across_stages_kinds_and_apps(other):
    plain = state()
    _, here = vectors.records(seal(plain))
    _, there = vectors.records(seal(plain, **other))
    assert not set(here) & set(there)
    assert not {r[4:20] for r in here} & {r[4:20] for r in there}  # not even one SIV


def test_boundaries_depend_on_the_key():
    plain = state(1000)
    sizes = [[len(r) for r in vectors.records(seal(plain, key(seed)))[1]] for seed in (1, 2)]
    assert sizes[0] != sizes[1]


def test_clear_header_shows_the_size_only_rounded():
    for length in (0, 1, 4095, 4096, 4097, 100_000):
        blob = seal(b"x" * length)
        shown = header_of(blob)["size"]
        assert shown % envelope.SIZE_GRANULE == 0 and shown >= length
        assert shown - length < envelope.SIZE_GRANULE
        assert open_(blob) == b"x" * length


def test_chunking_off_seals_randomly_in_fixed_pieces():
    plain = state(3000)  # several FIXED_CHUNK pieces
    one, two = seal(plain, chunking=False), seal(plain, chunking=False)
    assert header_of(one)["chunking"] == "fixed" and header_of(one)["salt"]
    assert one != two
    _, a = vectors.records(one)
    _, b = vectors.records(two)
    assert len(a) == -(-len(plain) // envelope.FIXED_CHUNK) and not set(a) & set(b)
    assert open_(one) == open_(two) == plain


def test_chunked_sealing_is_deterministic_but_headers_differ_per_version():
    plain = state()
    assert seal(plain, serial=4) == seal(plain, serial=4)
    assert header_of(seal(plain))["chunking"] == "cdc" and header_of(seal(plain))["salt"] == ""


def test_large_and_highly_compressible_file_round_trips_on_threads():
    plain = bytes(9 * 1024 * 1024) + state(2000)
    blob = seal(plain, workers=2)
    assert blob == seal(plain)  # threads change nothing in the bytes
    assert open_(blob) == plain


# --- what a reader refuses ----------------------------------------------------------------


def reason(blob: bytes, k: FileKey | None = None) -> str:
    with pytest.raises(TamperedError) as info:
        open_(blob, k)
    return str(info.value)


def test_chunk_list_changes_are_refused():
    blob = seal(state(), serial=1)
    head, recs = vectors.records(blob)
    _, other = vectors.records(seal(state(changed=1), serial=1))
    assert other[0] != recs[0]
    cases = {
        "reordered": [recs[1], recs[0], *recs[2:]],
        "duplicated": [recs[0], *recs],
        "dropped": recs[:3] + recs[4:],
        "spliced": [other[0], *recs[1:]],
    }
    for name, changed in cases.items():
        message = reason(vectors.padded(head + b"".join(changed)))
        assert any(w in message for w in ("not the ones sealed", "truncated", "after the last")), (
            name,
            message,
        )


def test_every_clear_field_is_type_and_range_checked():
    blob = seal(b'{"a": 1}')
    for change in (
        {"size": "1"},
        {"size": -4096},
        {"size": 4097},
        {"size": True},
        {"serial": "3"},
        {"serial": -1},
        {"v": 1},
        {"salt": "00"},
        {"chunking": "none"},
        {"cipher": "chacha20-poly1305"},
        {"compression": "zlib"},
        {"fingerprint": "x" * 64},
        {"writer": 5},
        {"writer": "w" * 300},
        {"time": None},
    ):
        edited = vectors.with_header(blob, **change)
        assert "malformed header" in reason(edited), change
    v1 = envelope.seal_bytes(b"{}", key(), **META, serial=1, writer="w", version=1)[1]
    for change in ({"size": "1"}, {"chunking": "cdc"}, {"size": 1 << 62}):
        assert "malformed header" in reason(vectors.with_header(v1, **change)), change


def _zlib(piece: bytes) -> bytes:
    comp = zlib.compressobj(6, zdict=envelope.ZDICT_V2)
    return comp.compress(piece) + comp.flush()


def forged(
    plain_chunks: list[bytes],
    size: int,
    k: FileKey | None = None,
    compress: Callable[[bytes], bytes] = _zlib,
) -> bytes:
    """A v2 file as a member could write it, with chunks and a manifest size of our choosing."""
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    k = k or key()
    header = envelope.Header(
        v=2,
        **META,
        serial=1,
        key_id=k.key_id,
        writer="w",
        time="2026-01-01T00:00:00Z",
        cipher=envelope.CIPHER_SIV,
        compression=envelope.COMPRESSION_V2,
        salt="",
        fingerprint="0" * 64,
        size=envelope.rounded_size(size),
        chunking=envelope.CHUNKING_CDC,
    )
    raw = header.encode()
    chunk_key, manifest_key = envelope._v2_keys(k, header)
    records, ivs = [], hashlib.sha256()
    for piece in plain_chunks:
        sealed = AESSIV(chunk_key).encrypt(compress(piece), None)
        ivs.update(sealed[:16])
        records.append(struct.pack(">I", len(sealed)) + sealed)
    manifest = struct.pack(">QI32s", size, len(plain_chunks), ivs.digest())
    return vectors.padded(
        b"SSTVAULT\x02"
        + struct.pack(">I", len(raw))
        + raw
        + AESSIV(manifest_key).encrypt(manifest, [raw])
        + b"".join(records)
    )


def test_output_never_exceeds_the_authenticated_size():
    # Chunks that inflate past the sealed size stop at the bound: nothing beyond is produced.
    out = io.BytesIO()
    blob = forged([bytes(1000), bytes(1000)], size=1500)
    with pytest.raises(TamperedError, match="corrupt compressed chunk"):
        envelope.open_(io.BytesIO(blob), out, key(), WHERE, **META)
    assert len(out.getvalue()) <= 1500
    # A chunk above the limit of its chunking is refused while inflating, not after.
    big = forged([bytes(envelope.MAX_CDC_CHUNK + 1)], size=envelope.MAX_CDC_CHUNK + 1)
    assert "corrupt compressed chunk" in reason(big)


@pytest.mark.parametrize("reader", ["isal", "stdlib"])
def test_authentic_chunks_that_are_not_one_complete_zlib_stream_are_refused(monkeypatch, reader):
    # A member's writer could seal anything: each decoder must refuse the same malformed streams.
    if reader == "isal":
        pytest.importorskip("isal", reason="ISA-L has no wheel for this platform")
    monkeypatch.setenv("SST_VAULT_NO_ISAL", "1" if reader == "stdlib" else "")
    piece = state(20)
    good = _zlib(piece)
    bad_adler = good[:-1] + bytes([good[-1] ^ 1])
    # ISA-L decodes files above 1 MiB only: good chunks in front make the file that large.
    front = [bytes(envelope.MAX_CDC_CHUNK)] * 5 if reader == "isal" else []
    size = sum(map(len, front)) + len(piece)
    for broken in (good + b"\0", good[:-5], bad_adler, good[:2], _zlib(b""), b"not zlib"):

        def compress(p: bytes, b: bytes = broken) -> bytes:
            return b if p == piece else _zlib(p)

        blob = forged([*front, piece], size=size, compress=compress)
        assert "corrupt compressed chunk" in reason(blob), broken[-8:]


def test_sizes_that_do_not_add_up_are_refused():
    assert "not the ones sealed" in reason(forged([b"abc"], size=5))  # chunks fall short
    assert "manifest out of range" in reason(forged([b"abc"], size=0))
    assert "manifest out of range" in reason(forged([], size=5))
    assert "not the ones sealed" in reason(forged([b"abc", b"de"], size=4096 + 2))


def test_huge_chunk_length_is_refused_before_reading():
    class Reader(io.BytesIO):
        largest = 0

        def read(self, n: int = -1) -> bytes:
            Reader.largest = max(Reader.largest, n)
            return super().read(n)

    head, recs = vectors.records(seal(state()))
    blob = vectors.padded(head + b"\xff\xff\xff\xff" + b"".join(recs)[4:])
    with pytest.raises(TamperedError, match="malformed chunk length"):
        envelope.open_(Reader(blob), io.BytesIO(), key(), WHERE, **META)
    assert Reader.largest <= envelope.MAX_SEALED


@pytest.mark.parametrize("writer", ["isal", "stdlib"])
@pytest.mark.parametrize("reader", ["isal", "stdlib"])
def test_either_zlib_writes_chunks_the_other_reads(monkeypatch, writer, reader):
    if "isal" in (writer, reader):
        pytest.importorskip("isal", reason="ISA-L has no wheel for this platform")
    plain = state(2000)
    monkeypatch.setenv("SST_VAULT_NO_ISAL", "1" if writer == "stdlib" else "")
    blob = seal(plain)
    assert blob == seal(plain)  # deterministic with either
    monkeypatch.setenv("SST_VAULT_NO_ISAL", "1" if reader == "stdlib" else "")
    assert open_(blob) == plain


def test_states_above_the_large_threshold_are_cut_coarser():
    plain = state(2000) + bytes(envelope.CDC_LARGE) + state(2000)
    blob = seal(plain)
    _, recs = vectors.records(blob)
    assert len(recs) < len(plain) / envelope.CDC_LARGE_AVG
    assert open_(blob) == plain


def _large_state() -> bytes:
    # Above CDC_LARGE, where chunks decode on threads (`_decoded_in_parallel`).
    return b"".join(state(4000, changed=i) for i in range(26))[: envelope.CDC_LARGE + 300_000]


def test_a_large_file_decoded_on_threads_refuses_an_edited_chunk_and_stops_its_threads():
    import threading

    plain = _large_state()
    assert len(plain) > envelope.CDC_LARGE
    blob = seal(plain)
    assert open_(blob) == plain
    head, recs = vectors.records(blob)
    middle = len(recs) // 2
    edited = bytearray(recs[middle])
    edited[40] ^= 1
    broken = vectors.padded(head + b"".join([*recs[:middle], bytes(edited), *recs[middle + 1 :]]))
    assert "a chunk was edited" in reason(broken)
    swapped = vectors.padded(
        head + b"".join([*recs[:middle], recs[middle + 1], recs[middle], *recs[middle + 2 :]])
    )
    assert "not the ones sealed" in reason(swapped)
    # A reader that stops early (an error downstream) leaves no decoding thread behind.
    header, raw = envelope.read_header(io.BytesIO(blob), WHERE)
    handle = io.BytesIO(blob)
    envelope.read_header(handle, WHERE)
    pieces = envelope._open_v2(handle, key(), header, raw, WHERE)
    next(pieces)
    pieces.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("sst-vault-open")]


def test_a_large_file_decoded_on_threads_never_hands_on_more_than_its_size():
    # Chunks are inflated on threads before the running total is known: each batch is checked
    # against what is left of the authenticated size before any of it is handed on.
    piece = bytes(envelope.MAX_CDC_CHUNK)
    count = (envelope.CDC_LARGE + envelope.MAX_CDC_CHUNK) // len(piece) + 1
    size = len(piece) * (count - 1) + 10
    out = io.BytesIO()
    with pytest.raises(TamperedError, match="corrupt compressed chunk"):
        envelope.open_(io.BytesIO(forged([piece] * count, size=size)), out, key(), WHERE, **META)
    assert len(out.getvalue()) <= size


def test_the_preset_dictionary_is_the_one_specified_and_reproducible():
    # SECURITY.md and examples/recover.py give these bytes; bench/pulumi_state.py makes them.
    digest = "6cbc1985bac136385de3ef18171737f2eb1b5de21d9c4493fe4e4771be7305e8"
    assert hashlib.sha256(envelope.ZDICT_V2).hexdigest() == digest
    assert digest in (ROOT / "SECURITY.md").read_text()
    spec = importlib.util.spec_from_file_location("pulumi_state", ROOT / "bench/pulumi_state.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    assert module.zdict() == envelope.ZDICT_V2
    # The recovery script carries its own copy (it must run without sst-vault): the same bytes.
    spec = importlib.util.spec_from_file_location("recover", ROOT / "examples/recover.py")
    recover = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recover)  # type: ignore[union-attr]
    assert recover.ZDICT_V2 == envelope.ZDICT_V2


def test_files_are_padded_with_zeros_to_a_unit_of_their_length():
    for plain in (b"", b"{}", state(), state(3000)):
        blob = seal(plain)
        head, recs = vectors.records(blob)
        end = len(head) + sum(map(len, recs))
        unit = envelope.padding_unit(end)
        assert len(blob) % unit == 0 and len(blob) - end < unit
        assert len(blob) - end <= max(end // 8, 511)
        assert blob[end:] == bytes(len(blob) - end)
    assert envelope.padding_unit(1 << 30) == 1 << 16  # at most 64 KiB, whatever the size
    # Versions of a state that differ in a few values usually come out equally long.
    lengths = {len(seal(state(changed=i))) for i in range(0, 400, 40)}
    assert len(lengths) <= 2


def test_padding_that_is_not_exactly_zeros_is_refused():
    blob = seal(state())
    assert "after the last chunk" in reason(blob[:-1] + b"\x01")
    assert "truncated" in reason(blob[:-1])
    assert "after the last chunk" in reason(blob + bytes(1))


def test_a_refused_large_file_leaves_no_decoding_thread_while_its_error_is_kept():
    # The running-total check raises inside the reader: the error's traceback keeps the
    # reader's frame, which must not keep the decoding pool (and batches decoded ahead) alive.
    import threading

    piece = bytes(envelope.MAX_CDC_CHUNK)
    count = (envelope.CDC_LARGE + envelope.MAX_CDC_CHUNK) // len(piece) + 1
    blob = forged([piece] * count, size=len(piece) * (count - 1) + 10)
    with pytest.raises(TamperedError, match="corrupt compressed chunk") as caught:
        envelope.open_(io.BytesIO(blob), io.BytesIO(), key(), WHERE, **META)
    assert caught.value.__traceback__ is not None  # still held, as a caller may hold it
    assert not [t for t in threading.enumerate() if t.name.startswith("sst-vault-open")]


def test_a_wrong_fingerprint_is_caught_where_the_writer_is_checked():
    # Only a key holder's writer can make the header's fingerprint disagree with the content:
    # reading back what was just sealed (verify-after-write) must catch it; `prepare`, which
    # relies on the authenticated header and chunks, may skip the SHA-256 pass over the state.
    blob = forged([state(20)], size=len(state(20)))
    with pytest.raises(TamperedError, match="content does not match its header"):
        open_(blob)
    out = io.BytesIO()
    envelope.open_(io.BytesIO(blob), out, key(), WHERE, **META, check_fingerprint=False)
    assert out.getvalue() == state(20)


def test_streaming_writes_batches_in_order_whatever_their_count(tmp_path: Path):
    # The streaming writer hands batches to os.writev in slices: more pieces than one call
    # takes, empty pieces, and single writes in between must all land in order.
    from vault import safefs

    pieces = [bytes([i % 251]) * (i % 7) for i in range(3 * safefs._IOV_MAX + 5)]
    with safefs.AtomicWriter(tmp_path, ("out.json",)) as writer:
        stream = writer.streaming()
        stream.write(b"head")
        stream.write_pieces(pieces)  # type: ignore[attr-defined]
        stream.write(b"tail")
        writer.finish().replace()
    assert (tmp_path / "out.json").read_bytes() == b"head" + b"".join(pieces) + b"tail"


def test_malloc_tuning_is_done_once_and_never_breaks_opening():
    # The glibc tuning before threaded decoding is best effort: it runs once per process and a
    # second large file opens the same (on other platforms it does nothing at all).
    plain = _large_state()
    blob = seal(plain)
    assert open_(blob) == plain
    assert envelope._MALLOC_TUNED.is_set() or sys.platform != "linux"
    envelope._keep_freed_memory()
    assert open_(blob) == plain


@pytest.mark.parametrize("block", [1, 7, 4096])
def test_records_read_in_blocks_that_split_them_anywhere_open_the_same(monkeypatch, block):
    # Framing reads the file a block at a time: records, their length prefixes and the padding
    # that straddle a block's end must be read exactly as from one piece, failures included.
    monkeypatch.setattr(envelope._BlockReader, "BLOCK", block)
    blob = seal(state())
    assert open_(blob) == state()
    head, recs = vectors.records(blob)
    assert "a chunk is missing" in reason(vectors.padded(head + b"".join(recs[:-1])))
    assert "after the last chunk" in reason(blob[:-1] + b"\x01")
    assert "truncated" in reason(blob[:-1])
    assert "after the last chunk" in reason(blob + bytes(1))
