"""Text that came from someone else (a lock commit, a remote's hook, git's stderr), made safe to
print on one terminal line.

A lock commit or a server-side hook's message is written by whoever can push: printed raw, an
escape sequence in it could rewrite the terminal or fake a line of our own output. Everything
such text goes through `printable` first: control characters (C0, DEL, C1, and the Unicode
line/paragraph separators and bidi controls) become visible `\\xNN`/`\\uNNNN` escapes, and the
result is cut to a bound.
"""

from __future__ import annotations

import unicodedata

MAX_TEXT = 300  # characters of foreign text shown in one message


def printable(text: object, limit: int = MAX_TEXT) -> str:
    """`text` (anything: a str, or a value of the wrong type) with control characters escaped."""
    if not isinstance(text, str):
        text = repr(text)
    out: list[str] = []
    for char in text:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif unicodedata.category(char) in ("Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    result = "".join(out)
    if len(result) > limit:
        result = result[: max(0, limit - 1)] + "…"
    return result


def remote_lines(stderr: str, limit: int = MAX_TEXT) -> str:
    """What the remote itself said (git prefixes it with "remote: "), escaped, on one line."""
    said = [
        line.removeprefix("remote:").strip()
        for line in stderr.splitlines()
        if line.startswith("remote:")
    ]
    return printable(" / ".join(s for s in said if s), limit)
