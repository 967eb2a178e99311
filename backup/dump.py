"""A backup: the database (`pg_dump -Fc`) and the installed packages in one tar, its manifest last.

The archive holds `database.dump`, `packages/<kind folder>/<name>/<version>/...`
and `manifest.json` (format, release, schema, times, and every file's size,
mode and sha256), written beside the target as `FILE.part` and renamed into
place, so an archive under its final name is always complete. Each file is
hashed while it is written into the tar: installed packages are never
changed in place (the installer renames whole folders), so no file is read
twice.
"""

import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

import psycopg2

from backup import pgclient
from backup.progress import Progress, size
from server.core import VERSION, db, layout, times
from server.core.errors import AyonError, first_line

FORMAT = "ayon-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DUMP = "database.dump"
PACKAGES = "packages"
CHUNK = 1 << 20


class BackupFailed(AyonError):
    """The backup could not be written; nothing is left under the archive's name."""


class _Hashing:
    """A file object that hashes and counts what tarfile reads from it."""

    def __init__(self, fileobj, on_read):
        self.fileobj, self.sha = fileobj, hashlib.sha256()
        self.on_read = on_read

    def read(self, n: int = -1) -> bytes:
        data = self.fileobj.read(n)
        self.sha.update(data)
        self.on_read(len(data))
        return data


def package_files(data_dir: Path) -> tuple[list[str], list[tuple[str, Path]]]:
    """Folders and files under each package kind's folder, as archive names (folders first, sorted)."""
    dirs, files = [], []
    for kind in sorted(layout.PACKAGE_FOLDERS):
        root = layout.package_dir(data_dir, kind)
        if not root.is_dir():
            continue
        for folder, subdirs, names in os.walk(root):
            subdirs.sort()
            base = Path(folder)
            relative = base.relative_to(data_dir).as_posix()
            dirs.append(f"{PACKAGES}/{relative}")
            for name in sorted(names):
                path = base / name
                if path.is_symlink() or not path.is_file():
                    continue  # the installer writes regular files only
                files.append((f"{PACKAGES}/{relative}/{name}", path))
    return dirs, files


def _database_facts(url: str) -> dict:
    try:
        conn = db.connect(url, "ayon-backup")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_database(), current_setting('server_version'), "
                            "(SELECT max(version) FROM schema_migrations)")
                name, server_version, schema = cur.fetchone()
        finally:
            conn.close()
    except psycopg2.Error as exc:
        raise BackupFailed(f"cannot read the database {db.database_name(url)} at {db.host_port(url)} "
                           f"({pgclient.without_server(first_line(exc))}): check AYON_POSTGRES_URL") from None
    return {"database": name, "postgres": server_version, "schema": schema or 0}


def create(url: str, data_dir: Path, target: Path, instance_id: str, progress: Progress) -> dict:
    """Write the backup to `target`; returns its manifest."""
    target = Path(target)
    if target.exists() and not target.is_file():
        raise BackupFailed(f"{target} exists and is not a file: name the archive to write")
    part = target.with_name(target.name + ".part")
    dump = target.with_name(target.name + ".dump.part")
    started_at, started = times.utc_now(), time.monotonic()
    facts = _database_facts(url)
    progress.step(f"backing up database {facts['database']} at {db.host_port(url)} "
                  f"(PostgreSQL {facts['postgres']}, schema {facts['schema']}) and {data_dir}")
    try:
        step = time.monotonic()
        progress.step("dumping the database (pg_dump, custom format)")
        pgclient.run([pgclient.binary("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
                      f"--file={dump}", "--dbname", pgclient.DSN], url, "pg_dump",
                     watch=lambda: progress.update(f"database: {size(_size_of(dump))}"))
        progress.step(f"database dumped: {size(dump.stat().st_size)} in {pgclient.elapsed(step)}")
        dirs, files = package_files(data_dir)
        sources = [(DUMP, dump)] + files
        total = sum(path.stat().st_size for _, path in sources)
        progress.step(f"writing {target}: the dump and {len(files)} package files ({size(total)})")
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": VERSION, **facts,
                    "instance_id": instance_id, "started_at": times.rfc3339(started_at), "dirs": dirs}
        _write(part, dirs, sources, total, progress, manifest)
        os.replace(part, target)
    except OSError as exc:
        raise BackupFailed(f"cannot write {target}: {first_line(exc)}") from None
    finally:
        for leftover in (part, dump):
            leftover.unlink(missing_ok=True)
    progress.step(f"backup written: {target} ({size(target.stat().st_size)}, {len(files)} package files, "
                  f"release {VERSION}, schema {facts['schema']}) in {pgclient.elapsed(started)}")
    return manifest


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _info(name: str, mode: int, kind: bytes = tarfile.REGTYPE, length: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, length, int(time.time())
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write(part: Path, dirs: list[str], sources: list[tuple[str, Path]], total: int, progress: Progress,
           manifest: dict) -> None:
    """The folders, the files (hashed as they are read) and, last, the manifest with their checksums."""
    done = [0]

    def count(n: int) -> None:
        done[0] += n
        progress.update(f"{done[0] * 100 // max(total, 1):3d} % ({size(done[0])} of {size(total)})")

    entries = {}
    with tarfile.open(part, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in dirs:
            tar.addfile(_info(name, 0o755, tarfile.DIRTYPE))
        for name, path in sources:
            with open(path, "rb") as src:
                stat = os.fstat(src.fileno())
                mode = 0o755 if stat.st_mode & 0o111 else 0o644
                hashing = _Hashing(src, count)
                tar.addfile(_info(name, mode, length=stat.st_size), hashing)
            entries[name] = {"size": stat.st_size, "mode": mode, "sha256": hashing.sha.hexdigest()}
        manifest.update(files=entries, finished_at=times.rfc3339(times.utc_now()))
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        tar.addfile(_info(MANIFEST, 0o644, length=len(body)), io.BytesIO(body))
