"""Validate JSON as `json.loads` would, from chunks, without holding the whole document.

A 100 MB Pulumi checkpoint decoded at once costs its size again as a str on top of the bytes;
commit must stay within a bounded memory budget. Large containers (the checkpoint's spine, its
resource list) are walked here, punctuation by punctuation; every value that fits in the
window (each resource, each string) goes to the json module's C scanner in one call, so the
Python-level work is one step per large-container member, not per byte. What is accepted and
refused is exactly `json.loads(data)`'s: same scanner, same encoding rules (UTF-8 with or
without a BOM, lone surrogates passed through; UTF-16/32 fall back to `json.loads`).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Iterator
from json.decoder import JSONDecodeError, scanstring

_WINDOW = 1024 * 1024  # characters: a value longer than this that fails is walked, not retried
_SPACE = re.compile(r"[ \t\n\r]*")
_LOW = 64 * 1024  # refill before a value when less than this is left, so few values straddle
_SCAN = json.JSONDecoder(object_pairs_hook=lambda _pairs: None).scan_once  # keeps nothing


def check(chunks: Iterable[bytes]) -> None:
    """Raise ValueError (a JSONDecodeError or UnicodeDecodeError) unless the bytes are JSON."""
    chunks = iter(chunks)
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= 4:
            break
    encoding = json.detect_encoding(head)
    if encoding not in ("utf-8", "utf-8-sig"):
        json.loads(head + b"".join(chunks))
        return
    decoder = codecs.getincrementaldecoder(encoding)("surrogatepass")

    def text() -> Iterator[str]:
        yield decoder.decode(head)
        for chunk in chunks:
            yield decoder.decode(chunk)
        yield decoder.decode(b"", final=True)

    _Walker(text()).document()


class _Walker:
    def __init__(self, texts: Iterator[str]) -> None:
        self.texts = texts
        self.buf = ""
        self.pos = 0
        self.base = 0  # characters dropped from the front of buf so far
        self.eof = False

    def _more(self) -> bool:
        """Append at least as much text as is left unread (doubling what a retry scans)."""
        want = max(len(self.buf) - self.pos, 1)
        pieces = [self.buf[self.pos :]]
        got = 0
        for piece in self.texts:
            pieces.append(piece)
            got += len(piece)
            if got >= want:
                break
        else:
            self.eof = True
        self.base += self.pos
        self.buf = "".join(pieces)
        self.pos = 0
        return got > 0

    def _fail(self, what: str, pos: int | None = None) -> ValueError:
        # Positions count from the start of the document, like json.loads's.
        where = self.base + (self.pos if pos is None else pos)
        return ValueError(f"{what}: char {where}")

    def _space(self) -> str:
        """Skip whitespace; return the next character, or "" at the end of the document."""
        while True:
            self.pos = _SPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def document(self) -> None:
        if not self._space():
            raise self._fail("Expecting value")
        self._value()
        if self._space():
            raise self._fail("Extra data")

    def _value(self) -> None:
        while True:
            first = self._space()
            if len(self.buf) - self.pos < _LOW and not self.eof:
                self._more()
                continue
            try:
                end = _SCAN(self.buf, self.pos)[1]
            except StopIteration:
                if self.eof:
                    raise self._fail("Expecting value") from None
            except JSONDecodeError as exc:
                if self.eof:
                    raise self._fail(exc.msg, exc.pos) from None
            else:
                # A number cut off by the window parses as a shorter one ("1" of "1.5", "-0.5"
                # of "-0.5e-3"): unless 3 characters follow it, read on and parse it again.
                if end + 3 <= len(self.buf) or self.eof:
                    self.pos = end
                    return
                self._more()
                continue
            if first in "{[" and len(self.buf) - self.pos >= _WINDOW:
                self._container(first)
                return
            self._more()  # the value may just be cut off by the window: retry with more

    def _container(self, opening: str) -> None:
        closing = "}" if opening == "{" else "]"
        self.pos += 1
        if self._space() == closing:
            self.pos += 1
            return
        while True:
            if opening == "{":
                self._key()
                if self._space() != ":":
                    raise self._fail("Expecting ':' delimiter")
                self.pos += 1
            self._value()
            following = self._space()
            self.pos += 1
            if following == closing:
                return
            if following != ",":
                self.pos -= 1
                raise self._fail(f"Expecting ',' delimiter or {closing!r}")

    def _key(self) -> None:
        if self._space() != '"':
            raise self._fail("Expecting property name enclosed in double quotes")
        while True:
            try:
                self.pos = scanstring(self.buf, self.pos + 1, True)[1]
                return
            except JSONDecodeError as exc:
                if self.eof:
                    raise self._fail(exc.msg, exc.pos) from None
            self._more()


# --- the check in a child process (sealing.JsonCheckProcess starts it) -------------------

_READ = 1024 * 1024


def child_main(fd: int) -> None:
    """Check the file open on `fd`; print one JSON line: the SHA-256 of every byte read, and
    the error `json.loads` would raise (or null).

    The parent seals the same file meanwhile and compares the digest with its own pass, so a
    verdict counts only for the bytes sealed. It reads with pread (the parent shares the file
    offset), holds no key, and reads to the end even after an error, for the digest.
    """
    import hashlib
    import os
    import sys

    digest = hashlib.sha256()
    offset = 0

    def chunks() -> Iterator[bytes]:
        nonlocal offset
        while chunk := os.pread(fd, _READ, offset):
            offset += len(chunk)
            digest.update(chunk)
            yield chunk

    error = None
    try:
        check(chunks())
    except (ValueError, RecursionError) as exc:
        error = str(exc)
    for _rest in chunks():
        pass
    if os.environ.get("SST_VAULT_TEST_PAUSE") == "json-check" and hasattr(os, "kill"):
        import signal  # tests kill the child here (see safefs.pause_point)

        os.kill(os.getpid(), signal.SIGSTOP)
    sys.stdout.write(json.dumps({"sha256": digest.hexdigest(), "error": error}) + "\n")
