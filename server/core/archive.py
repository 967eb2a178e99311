"""A zip unpacker for untrusted packages: everything is checked before one byte is written.

`inspect()` reads only the central directory and refuses what could write
outside the destination or exhaust the disk: absolute paths, `..`, links,
device files, duplicate or conflicting names, encrypted entries, too many
entries, too many bytes, suspicious compression ratios. `extract()` then
writes only regular files and folders it creates itself inside an empty
destination, counting bytes again while it writes (headers can lie).
"""

import hashlib
import io
import lzma
import os
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from server.core.errors import AyonError, shown

CHUNK = 1 << 20
MAX_NAME_BYTES = 255  # one file or folder name (NAME_MAX of Linux file systems)
# PKWARE's Unix extra field: its variable part names the target of a hard or symbolic link.
PKWARE_UNIX_EXTRA = 0x000D
# What a damaged entry raises while it is decompressed (CRC, stream or method errors).
CORRUPT = (zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, NotImplementedError, RuntimeError)


class UnsafeArchive(AyonError):
    """The archive is corrupt or could escape or exhaust its destination; the message is the reason."""


@dataclass(frozen=True)
class Limits:
    max_entries: int = 10_000
    max_total_bytes: int = 1 << 30  # uncompressed, the whole package
    max_ratio: int = 100  # uncompressed/compressed of one entry...
    ratio_min_bytes: int = 1 << 20  # ...once it is at least this big (small text compresses well)
    max_path_length: int = 1024


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Entry:
    info: zipfile.ZipInfo
    path: PurePosixPath  # normalised, relative, safe
    is_dir: bool


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_sha256(data: bytes, expected: str) -> None:
    """Raise UnsafeArchive unless the content has the expected sha256."""
    actual = sha256_of(data)
    if actual != expected.lower():
        raise UnsafeArchive(f"sha256 mismatch: expected {expected}, got {actual}")


def open_zip(data: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        raise UnsafeArchive(f"not a valid zip archive ({exc})") from None


def _safe_path(name: str, limits: Limits) -> PurePosixPath:
    if not name or "\x00" in name:
        raise UnsafeArchive(f"entry {name!r}: empty name or NUL character")
    if len(name) > limits.max_path_length:
        raise UnsafeArchive(f"entry {name[:60]!r}...: path longer than {limits.max_path_length} characters")
    if "\\" in name:
        raise UnsafeArchive(f"entry {name!r}: backslash in path (a Windows separator could escape)")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"entry {name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"entry {name!r}: path escapes the package ('..')")
    if not parts:
        raise UnsafeArchive(f"entry {name!r}: names no file")
    for part in parts:
        # What the file system takes: a name it cannot encode, or longer than NAME_MAX, fails only when written.
        try:
            size = len(part.encode())
        except UnicodeEncodeError:
            raise UnsafeArchive(f"entry {shown(name)}: not UTF-8 text") from None
        if size > MAX_NAME_BYTES:
            raise UnsafeArchive(f"entry {shown(name)}: a name in the path is longer than {MAX_NAME_BYTES} bytes")
    return PurePosixPath(*parts)


def entry_path(name: str, limits: Limits = DEFAULT_LIMITS) -> PurePosixPath:
    """An entry's name (of a zip or, for a backup, a tar) as a relative path that stays inside its
    destination, or UnsafeArchive saying why."""
    return _safe_path(name, limits)


def _has_link_target(info: zipfile.ZipInfo) -> bool:
    extra, offset = info.extra, 0
    while offset + 4 <= len(extra):
        header, size = struct.unpack_from("<HH", extra, offset)
        # Fixed part: atime, mtime, uid, gid (12 bytes); anything after is a link target.
        if header == PKWARE_UNIX_EXTRA and size > 12:
            return True
        offset += 4 + size
    return False


def _check_type(info: zipfile.ZipInfo) -> None:
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise UnsafeArchive(f"entry {info.filename!r}: symbolic link")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise UnsafeArchive(f"entry {info.filename!r}: device file")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchive(f"entry {info.filename!r}: special file (mode {oct(mode)})")
    if _has_link_target(info):
        raise UnsafeArchive(f"entry {info.filename!r}: hard link")
    if info.flag_bits & 0x1:
        raise UnsafeArchive(f"entry {info.filename!r}: encrypted")


def inspect(archive: zipfile.ZipFile, limits: Limits = DEFAULT_LIMITS) -> list[Entry]:
    """Check every entry's header; returns them normalised, or raises UnsafeArchive with the reason."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise UnsafeArchive(f"too many entries: {len(infos)} (at most {limits.max_entries})")
    entries, seen, total = [], {}, 0
    for info in infos:
        path = _safe_path(info.filename, limits)
        _check_type(info)
        is_dir = info.is_dir() or stat.S_ISDIR(info.external_attr >> 16)
        if path in seen:
            if seen[path] and is_dir:
                continue  # the same folder listed twice is harmless
            raise UnsafeArchive(f"entry {info.filename!r}: duplicate name")
        seen[path] = is_dir
        total += info.file_size
        if total > limits.max_total_bytes:
            raise UnsafeArchive(f"too large uncompressed: more than {limits.max_total_bytes} bytes")
        if info.file_size >= limits.ratio_min_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            ratio = info.file_size // max(info.compress_size, 1)
            raise UnsafeArchive(
                f"entry {info.filename!r}: suspicious compression ratio {ratio}:1 (at most {limits.max_ratio}:1)"
            )
        entries.append(Entry(info, path, is_dir))
    for path in seen:
        for parent in path.parents:
            if seen.get(parent) is False:
                raise UnsafeArchive(f"entry {str(path)!r}: conflicts with the file {str(parent)!r}")
    return entries


def _write_file(archive: zipfile.ZipFile, entry: Entry, target: Path, budget: int) -> int:
    executable = bool((entry.info.external_attr >> 16) & 0o111)
    # O_EXCL|O_NOFOLLOW: never follow or overwrite anything, even if a check above were wrong.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if executable else 0o644)
    written = 0
    with os.fdopen(fd, "wb") as out, archive.open(entry.info) as src:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > entry.info.file_size or written > budget:
                raise UnsafeArchive(f"entry {entry.info.filename!r}: more data than its header declares")
            out.write(chunk)
    return written


def extract(data: bytes, dest: Path, limits: Limits = DEFAULT_LIMITS) -> int:
    """Unpack `data` into the empty folder `dest` after inspecting it; returns the bytes written."""
    archive = open_zip(data)
    with archive:
        entries = inspect(archive, limits)
        dest = Path(dest)
        if any(dest.iterdir()):
            raise UnsafeArchive(f"destination {dest} is not empty")
        budget = limits.max_total_bytes
        for entry in entries:
            target = dest.joinpath(*entry.path.parts)
            if entry.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                budget -= _write_file(archive, entry, target, budget)
            except OSError as exc:
                if exc.errno:  # a real disk problem (full, read-only), not bad data
                    raise
                raise UnsafeArchive(f"entry {entry.info.filename!r}: corrupt ({exc})") from None
            except CORRUPT as exc:
                raise UnsafeArchive(f"entry {entry.info.filename!r}: corrupt ({exc})") from None
    return limits.max_total_bytes - budget

