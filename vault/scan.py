"""Find plaintext SST state in a work tree or in git history (works in any repository).

A file is reported when its path is where the plaintext recipe or SST's home keeps state
(`…/state/{app,passphrase,secret}/….json`), or when its content is what SST writes there,
wherever the file sits and whatever it is called:
- a Pulumi checkpoint or an export of one, recognised by its keys (`checkpoint` holding `stack`
  or `latest`; `deployment` holding `manifest` or `resources`; `stack` next to `latest`) in any
  order, indentation or key sorting (`jq -S`), or by Pulumi resource URNs;
- a passphrase: the whole file is 44 characters of base64 of 32 bytes;
- an encrypted SST secret file: binary content (not UTF-8 text) under a `*.json` name.
The content is read through a UTF-8 or UTF-16 byte order mark and through gzip, bzip2 or xz
compression (`prod.json.gz`), so re-encoding or compressing state does not hide it. sst-vault's
own files (`*.vault`, starting with the `SSTVAULT` signature) and the wrapped data key are
never reported.

Only the first `HEAD_SIZE` bytes of a file are read (and at most `HEAD_SIZE` bytes
decompressed from them): every rule decides on them. Paths a user excludes (test fixtures of
fake state, say) are left out by `excluded`, and counted, never hidden.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from vault.envelope import MAGIC
from vault.errors import UsageError
from vault.paths import KINDS

if TYPE_CHECKING:
    from vault.gitstore import GitResult

HEAD_SIZE = 64 * 1024
SKIP_DIRS = {".git", "node_modules", ".sst"}  # when walking a folder that is not a git repo
# Key patterns: a key is `"name"` followed by `:` whatever the spacing; values may come in any
# order (jq -S sorts keys), so each rule asks for two keys anywhere in the head.
_CHECKPOINT_KEY = re.compile(rb'"checkpoint"\s*:\s*\{')
_DEPLOYMENT_KEY = re.compile(rb'"deployment"\s*:\s*\{')
_STACK_KEY = re.compile(rb'"stack"\s*:\s*"')
_LATEST_KEY = re.compile(rb'"latest"\s*:\s*\{')
_MANIFEST_KEY = re.compile(rb'"(manifest|resources|secrets_providers)"\s*:')
_URN = re.compile(rb'"urn:pulumi:[^"]*::')
_SECRET_MIN = 12 + 16  # nonce and GCM tag: the smallest SST secret file
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
_COMPRESSED = {  # signature -> (name, suffix the compressed file usually has)
    b"\x1f\x8b": ("gzip", ".gz"),
    b"BZh": ("bzip2", ".bz2"),
    b"\xfd7zXZ\x00": ("xz", ".xz"),
}


@dataclass
class Finding:
    path: str  # posix, relative to the scanned folder (tree) or the repository top (history)
    reason: str
    commit: str | None = None

    def line(self) -> str:
        where = f"{self.commit[:12]} " if self.commit else ""
        return f"{where}{self.path}: {self.reason}"


def classify(path: str, head: bytes) -> str | None:
    """Why `path` with content starting with `head` is plaintext SST state, or None."""
    if head.startswith(MAGIC):
        return None  # an sst-vault file: encrypted
    for signature, (method, suffix) in _COMPRESSED.items():
        if head.startswith(signature):
            inner = _decompress_head(method, head)
            if inner is None or inner.startswith(MAGIC):
                return None
            inner_path = path[: -len(suffix)] if path.endswith(suffix) else path
            reason = _classify_content(inner_path, _decode_bom(inner), compressed=True)
            return f"{reason} ({method}-compressed)" if reason else None
    return _classify_content(path, _decode_bom(head))


def _classify_content(path: str, head: bytes, *, compressed: bool = False) -> str | None:
    parts = PurePosixPath(path).parts
    folders, name = parts[:-1], parts[-1] if parts else ""
    if head.lstrip().startswith(b"{"):
        kind = _pulumi_kind(head)
        if kind:
            return kind
    if _is_passphrase(head):
        if "passphrase" in folders:
            return "SST passphrase in plaintext (it opens the stage's secrets)"
        return "a 32-byte key in base64, what an SST passphrase file holds (it opens the secrets)"
    if name.endswith(".json") and _is_sst_secret(head):
        return "SST secret file (readable with the stage's passphrase)"
    if compressed:
        return None  # the path rule below is about the file itself, not what it compresses
    for i, folder in enumerate(folders[:-1]):
        if folder == "state" and folders[i + 1] in KINDS and name.endswith(".json"):
            return f"plaintext SST {folders[i + 1]} file (by its path)"
    return None


def excluded(path: str, patterns: Iterable[str]) -> bool:
    """Whether `path` (posix) matches a pattern, or lies in a folder that does.

    Patterns are shell globs on the whole path, `*` crossing `/` (`tests/*.json` excludes
    `tests/a/b.json`); `tests/fixtures` excludes that folder and everything in it.
    """
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    globs = [pattern.strip("/") for pattern in patterns]
    return any(fnmatch.fnmatchcase(prefix, glob) for glob in globs for prefix in prefixes)


def _pulumi_kind(head: bytes) -> str | None:
    """A Pulumi checkpoint or export, by its keys in any order, or by resource URNs."""
    if _CHECKPOINT_KEY.search(head) and (_STACK_KEY.search(head) or _LATEST_KEY.search(head)):
        return "Pulumi checkpoint (SST app state) in plaintext"
    if _DEPLOYMENT_KEY.search(head) and _MANIFEST_KEY.search(head):
        return "exported Pulumi state in plaintext"
    if _STACK_KEY.search(head) and _LATEST_KEY.search(head):
        return "exported Pulumi state in plaintext"
    if _URN.search(head):
        return "Pulumi resource state (urn:pulumi:…) in plaintext"
    return None


def _decode_bom(head: bytes) -> bytes:
    """`head` as UTF-8 without a byte order mark (UTF-16 is re-encoded; a cut pair is dropped)."""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            body = head[len(bom) :]
            if encoding == "utf-8":
                return body
            return body.decode(encoding, errors="ignore").encode()
    return head


def _decompress_head(method: str, head: bytes) -> bytes | None:
    """Up to HEAD_SIZE bytes decompressed from the start of a compressed file (a zip bomb
    yields no more than that), or None when it is not valid compressed data."""
    import bz2
    import lzma
    import zlib

    try:
        if method == "gzip":
            return zlib.decompressobj(wbits=31).decompress(head, HEAD_SIZE)
        if method == "bzip2":
            return bz2.BZ2Decompressor().decompress(head, max_length=HEAD_SIZE)
        return lzma.LZMADecompressor().decompress(head, max_length=HEAD_SIZE)
    except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError):
        return None


def _is_passphrase(head: bytes) -> bool:
    text = head.strip()
    if len(text) != 44:
        return False
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _is_sst_secret(head: bytes) -> bool:
    """Binary under a `*.json` name: SST's secret files are a nonce and AES-GCM ciphertext.

    Text (any UTF-8, JSON or not, a cut-off JSON document included) is never one: random
    bytes of this length are valid UTF-8 with negligible probability."""
    if len(head) < _SECRET_MIN:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by HEAD_SIZE is still text.
        return not (exc.start >= len(head) - 3 and exc.reason == "unexpected end of data")
    return False


# --- the work tree --------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> GitResult:
    from vault.gitstore import run_git

    return run_git(cwd, *args, check=False)


def git_top(path: Path) -> Path | None:
    proc = _git(path, "rev-parse", "--show-toplevel")
    return Path(proc.stdout.decode().strip()) if proc.code == 0 else None


def _read_head(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(HEAD_SIZE)


def _tree_files(root: Path) -> Iterator[tuple[str, Path | None]]:
    """(relative path, file to read or None when only the index holds it) under `root`."""
    if git_top(root) is not None:
        listed = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        for rel in dict.fromkeys(listed.stdout.decode(errors="surrogateescape").split("\0")):
            if rel:
                path = root / rel
                yield rel, path if path.exists() or path.is_symlink() else None
        return
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            path = Path(dirpath, name)
            yield path.relative_to(root).as_posix(), path


def scan_tree(path: Path) -> list[Finding]:
    """Plaintext state among the files git would commit under `path` (or every file there)."""
    path = path.absolute()
    if path.is_file():
        head = _read_head(path)
        reason = classify(path.name, head) if head is not None else None
        return [Finding(path.name, reason)] if reason else []
    if not path.is_dir():
        raise UsageError(f"{path} does not exist", "give a folder or file to scan")
    findings = []
    for rel, file in _tree_files(path):
        if file is None:
            proc = _git(path, "cat-file", "blob", f":./{rel}")
            head = proc.stdout[:HEAD_SIZE] if proc.code == 0 else None
        elif file.is_symlink() or not file.is_file():
            continue
        else:
            head = _read_head(file)
        if head is None:
            continue
        reason = classify(rel, head)
        if reason:
            findings.append(Finding(rel, reason))
    if git_top(path) is not None:
        findings += _staged_versions(path, {f.path for f in findings})
    return findings


def _staged_versions(root: Path, found: set[str]) -> list[Finding]:
    """Staged content that differs from the work tree: it is what a commit would take."""
    from vault.gitstore import iter_blobs

    changed = _git(root, "diff", "--name-only", "-z", "--relative").stdout.decode(
        errors="surrogateescape"
    )
    paths = [p for p in changed.split("\0") if p and p not in found]
    if not paths:
        return []
    staged = _git(root, "ls-files", "-s", "-z", "--", *paths).stdout.decode(
        errors="surrogateescape"
    )
    blobs: dict[str, str] = {}
    for entry in staged.split("\0"):
        info, _, rel = entry.partition("\t")
        fields = info.split()
        if rel and len(fields) == 3 and fields[0] != "160000":
            blobs[rel] = fields[1]
    top = git_top(root) or root
    heads = dict(iter_blobs(top, blobs.values(), head=HEAD_SIZE))
    findings = []
    for rel, blob in blobs.items():
        head = heads.get(blob)
        reason = classify(rel, head) if head is not None else None
        if reason:
            findings.append(Finding(rel, f"{reason} (staged version)"))
    return findings


# --- history --------------------------------------------------------------------------------


def scan_history(path: Path) -> list[Finding]:
    """Every file version any commit (on any ref) introduced under `path` that is plaintext."""
    from vault.gitstore import iter_blobs

    path = path.absolute()
    folder = path if path.is_dir() else path.parent
    top = git_top(folder)
    if top is None:
        raise UsageError(f"{folder} is not inside a git repository", "--history needs git")
    proc = _git(
        folder,
        "log",
        "--all",
        "--format=%x1e%H",
        "--raw",
        "--no-abbrev",
        "--no-renames",
        "--diff-merges=first-parent",
        "--",
        path.name if path.is_file() else ".",
    )
    if proc.code != 0:
        return []  # a repository without commits has no history to scan
    versions: list[tuple[str, str, str]] = []  # (commit, path from the top, blob)
    for record in proc.stdout.decode(errors="surrogateescape").split("\x1e")[1:]:
        commit, _, raw = record.partition("\n")
        for line in raw.splitlines():
            info, _, rel = line.partition("\t")
            fields = info.split()
            if line.startswith(":") and len(fields) >= 5 and fields[4][0] in "AMT":
                versions.append((commit.strip(), rel, fields[3]))
    heads = dict(iter_blobs(top, (blob for *_, blob in versions), head=HEAD_SIZE))
    findings = []
    for commit, rel, blob in versions:
        head = heads.get(blob)
        if head is None:
            continue
        reason = classify(rel, head)
        if reason:
            findings.append(Finding(rel, reason, commit))
    return findings


__all__ = ["Finding", "classify", "excluded", "scan_history", "scan_tree"]
