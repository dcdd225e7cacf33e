"""Recover an SST state file from an sst-vault file without sst-vault (format versions 1, 2).

Needs only Python 3.11 and `cryptography`; it follows the format as specified in SECURITY.md
(and the docstring of vault/envelope.py), so it keeps working if sst-vault is gone.

age backend: get the vault's data key with the real age CLI, then decrypt:

    age -d -i key.txt infra/state/data-key.age > data-key.bin      # 32 raw bytes
    python examples/recover.py --data-key-file data-key.bin infra/state/app/prod.json.vault \
        > ~/.config/sst/state/app/<app>/prod.json
    # or: --data-key-hex "$(age -d -i key.txt infra/state/data-key.age | xxd -p -c 64)"

fernet backend: python examples/recover.py --fernet-key-file key.txt FILE > OUT
    # or: --fernet-key="$SST_VAULT_KEY" (with the "=": a Fernet key may start with "-"; with
    # several keys, the one the file was sealed under)

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
# Format v2's preset zlib dictionary: 32768 bytes, zlib-compressed and base64 here
# (SECURITY.md gives the SHA-256 of the 32768 bytes).
ZDICT_V2 = zlib.decompress(
    base64.b64decode(
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


def hkdf(ikm: bytes, salt: bytes | None, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def recover_v2(raw: bytes, body: bytes, header: dict, ikm: bytes) -> bytes:
    """Format v2: a sealed manifest, length-prefixed AES-SIV chunks (each a zlib stream), zeros."""
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
    # Then zero bytes up to a multiple of 2^min(16, max(9, bitlen(L) - 4)), L = the length so far.
    length = 13 + len(raw) + at
    unit = 1 << min(16, max(9, length.bit_length() - 4))
    if body[at:] != bytes(-length % unit):
        raise ValueError("the file does not end with its padding")
    if len(plain) != size or not hmac.compare_digest(ivs.digest(), digest):
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
