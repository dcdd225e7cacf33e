"""The content-defined cutter of format v2: pyfastcdc (Cython) against a vectorised pure-Python one.

    python bench/cutters.py [--mb 8]

Prints throughput (MB/s, best of 3) of: pyfastcdc's FastCDC with a seeded gear table (what
vault/envelope.py uses), its pure-Python fallback, and a keyed cutter written here with
"vectorised" bytes tricks only (numpy is not a dependency): the window hash of every position
at once is the XOR of keyed `bytes.translate` tables applied to shifted copies of the data,
combined as big integers, and cut candidates are found with `bytes.find`. It is as keyed as
one can wish (its tables come from HKDF of the key) but 20-40x slower than pyfastcdc, which is
why the envelope uses pyfastcdc and its XOR seed (see SECURITY.md).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import warnings
from collections.abc import Callable

import pulumi_state

WINDOW = 8  # bytes that decide a cut point, like gear's effective window at these sizes


def _tables(key: bytes) -> list[bytes]:
    out = []
    for j in range(2 * WINDOW):
        perm = hashlib.shake_256(key + bytes([j])).digest(256)
        out.append(bytes.maketrans(bytes(range(256)), perm))
    return out


def vector_cut(data: bytes, key: bytes, avg: int = 4096, lo: int = 1024, hi: int = 16384):
    """Cut points (ends) of `data`: where two keyed window hashes hit zero (1 in `avg`)."""
    tables = _tables(key)
    n = len(data)

    def window_hash(first: int) -> bytes:
        acc = 0
        for j in range(WINDOW):
            acc ^= int.from_bytes(data.translate(tables[first + j]), "big") >> (8 * j)
        return acc.to_bytes(n, "big")

    h1, h2 = window_hash(0), window_hash(WINDOW)
    mask = (avg >> 8) - 1  # h1 == 0 is 1/256; h2 & mask == 0 brings it to 1/avg
    cuts, last, at = [], 0, h1.find(0, lo)
    while at >= 0:
        if h2[at] & mask == 0 and at + 1 - last >= lo:
            while at + 1 - last > hi:
                last += hi
                cuts.append(last)
            cuts.append(at + 1)
            last = at + 1
        at = h1.find(0, at + 1)
    while n - last > hi:
        last += hi
        cuts.append(last)
    if last < n:
        cuts.append(n)
    return cuts


def fastcdc_cut(data: bytes, impl: str = "cy"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if impl == "cy":
            from pyfastcdc.cy import FastCDC
        else:
            from pyfastcdc.py import FastCDC
    cutter = FastCDC(4096, min_size=1024, max_size=16384, seed=0x1234_5678_9ABC_DEF)
    return [c.offset + c.length for c in cutter.cut_buf(data)]


def best_of(fn: Callable[[], list[int]], runs: int = 3) -> tuple[float, list[int]]:
    times, cuts = [], []
    for _ in range(runs):
        start = time.perf_counter()
        cuts = fn()
        times.append(time.perf_counter() - start)
    return min(times), cuts


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=8)
    args = parser.parse_args()
    data = pulumi_state.checkpoint(int(args.mb * 1_000_000))
    mb = len(data) / 1e6
    small = data[:1_000_000]
    rows = [
        ("pyfastcdc (Cython), seeded", data, lambda: fastcdc_cut(data)),
        ("vectorised pure Python, keyed tables", data, lambda: vector_cut(data, b"k")),
        ("pyfastcdc pure-Python fallback (1 MB)", small, lambda: fastcdc_cut(small, "py")),
    ]
    print(f"{mb:.1f} MB of Pulumi-like JSON; Python {sys.version.split()[0]}")
    for name, buf, fn in rows:
        seconds, cuts = best_of(fn, 3 if buf is data else 1)
        mean = len(buf) / max(1, len(cuts))
        print(f"{name:40s} {len(buf) / 1e6 / seconds:8.1f} MB/s  mean chunk {mean:,.0f} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
