"""Restore a backup into an empty database and data folder; the archive is read as hostile.

Before anything is written, every header is checked with the package
unpacker's rules (server/core/archive.py `entry_path`: no absolute path, no
`..`, no backslash, names the file system takes) plus a tar's own: regular
files and folders only (no link, device, FIFO or sparse file), no duplicate,
only the names a backup has, the manifest last, and every file listed in it
with its size. Then the target is checked: a database with tables or a package
folder with anything in it is refused unless `--force`. The files are unpacked
into the data folder's `.restoring/`, each counted and checked against its
sha256 while it is written (O_EXCL|O_NOFOLLOW). Only then does pg_restore run,
in one transaction (a failure changes nothing), and the package folders are
renamed into place. The dump's SQL runs with the target role's rights: restore
only a backup you made.
"""

import hashlib
import json
import os
import re
import shutil
import tarfile
import time
from pathlib import Path, PurePosixPath

from backup import pgclient
from backup.dump import DUMP, FORMAT, FORMAT_VERSION, MANIFEST, PACKAGES
from backup.progress import Progress, size
from server.core import archive, db, layout, migrations
from server.core.errors import EXIT_CONFIG, AyonError, first_line

MAX_ENTRIES = 200_000
MANIFEST_MAX_BYTES = 64 << 20
CHUNK = 1 << 20
SHA256 = re.compile(r"[0-9a-f]{64}")
MODES = (0o644, 0o755)
# User tables and the like: what makes a database not empty.
RELATIONS = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%%'
ORDER BY c.relname
"""


class BadArchive(AyonError):
    """Not a backup this release can restore: the message names the file and what is wrong."""

    exit_code = EXIT_CONFIG


class TargetNotEmpty(AyonError):
    """The database or data folder already holds something; `--force` replaces it."""

    exit_code = EXIT_CONFIG


def _kind(member: tarfile.TarInfo) -> str | None:
    """What is wrong with a member's type, or None for a regular file or folder."""
    if member.issym():
        return "a symbolic link"
    if member.islnk():
        return "a hard link"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a FIFO"
    if member.issparse():
        return "a sparse file"
    if not (member.isreg() or member.isdir()):
        return f"a special entry (type {member.type!r})"
    return None


def _allowed(name: str, is_dir: bool) -> bool:
    """The names a backup has: the manifest, the dump, and the package folders' contents."""
    if name in (MANIFEST, DUMP):
        return not is_dir
    parts = PurePosixPath(name).parts
    if parts[0] != PACKAGES:
        return False
    if len(parts) == 1:
        return is_dir
    return parts[1] in layout.PACKAGE_FOLDERS.values() and (is_dir or len(parts) > 2)


class Archive:
    """A backup's tar, its headers checked and its manifest read; nothing unpacked yet."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.tar = tarfile.open(self.path, "r:")
        except FileNotFoundError:
            raise BadArchive(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise BadArchive(f"{self.path}: a folder, not a backup archive") from None
        except (tarfile.TarError, OSError) as exc:
            raise BadArchive(f"{self.path}: not a backup archive (not a tar file: {first_line(exc)})") from None
        try:
            self.files, self.dirs = self._headers()
            self.manifest = self._manifest()
        except BaseException:
            self.tar.close()
            raise

    def bad(self, what: str) -> BadArchive:
        return BadArchive(f"{self.path}: {what}")

    def _headers(self) -> tuple[dict[str, tarfile.TarInfo], list[str]]:
        files, dirs, seen = {}, [], {}
        try:
            for count, member in enumerate(self.tar, 1):
                if count > MAX_ENTRIES:
                    raise self.bad(f"more than {MAX_ENTRIES} entries")
                try:
                    path = archive.entry_path(member.name)
                except archive.UnsafeArchive as exc:
                    raise self.bad(str(exc)) from None
                name = path.as_posix()
                wrong = _kind(member)
                if wrong:
                    raise self.bad(f"entry {name!r} is {wrong}")
                if not _allowed(name, member.isdir()):
                    raise self.bad(f"entry {name!r} is no part of a backup")
                if name in seen and not (member.isdir() and seen[name]):
                    raise self.bad(f"entry {name!r}: duplicate name")
                if MANIFEST in files:
                    raise self.bad(f"entry {name!r} after {MANIFEST}, which is written last")
                seen[name] = member.isdir()
                if member.isdir():
                    dirs.append(name)
                else:
                    files[name] = member
        except tarfile.TarError as exc:
            raise self.bad(f"a damaged or cut short tar ({first_line(exc)})") from None
        if MANIFEST not in files:
            raise self.bad(f"no {MANIFEST}: not a backup, or cut short")
        for name in seen:
            for parent in PurePosixPath(name).parents:
                if seen.get(parent.as_posix()) is False:
                    raise self.bad(f"entry {name!r} conflicts with the file {parent.as_posix()!r}")
        return files, dirs

    def _manifest(self) -> dict:
        member = self.files.pop(MANIFEST)
        if member.size > MANIFEST_MAX_BYTES:
            raise self.bad(f"{MANIFEST} is larger than {size(MANIFEST_MAX_BYTES)}")
        try:
            doc = json.loads(self.tar.extractfile(member).read())
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise self.bad(f"{MANIFEST} cannot be read ({first_line(exc)})") from None
        except (ValueError, RecursionError):
            raise self.bad(f"{MANIFEST} is not JSON") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise self.bad(f"{MANIFEST} is not an AYON backup's (format is not {FORMAT!r})")
        if doc.get("format_version") != FORMAT_VERSION:
            raise self.bad(f"backup format version {doc.get('format_version')!r}; this release reads "
                           f"{FORMAT_VERSION}")
        known = migrations.load()[-1].version
        schema = doc.get("schema")
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < 0:
            raise self.bad(f"{MANIFEST}: schema is not a whole number")
        if schema > known:
            raise self.bad(f"made with schema {schema} (release {str(doc.get('version'))[:40]}); this release "
                           f"knows schema {known}: restore it with that release or a newer one")
        listed = doc.get("files")
        if not isinstance(listed, dict) or DUMP not in listed:
            raise self.bad(f"{MANIFEST} lists no {DUMP}")
        for name, entry in listed.items():
            if not (isinstance(entry, dict) and isinstance(entry.get("size"), int) and entry["size"] >= 0
                    and isinstance(entry.get("sha256"), str) and SHA256.fullmatch(entry["sha256"])
                    and entry.get("mode") in MODES):
                raise self.bad(f"{MANIFEST}: the entry of {name[:60]!r} is not a size, mode and sha256")
        missing = sorted(set(listed) - set(self.files))
        extra = sorted(set(self.files) - set(listed))
        if missing or extra:
            which = f"{missing[0]!r} is missing" if missing else f"{extra[0]!r} is not in {MANIFEST}"
            raise self.bad(f"the files do not match {MANIFEST}: {which}")
        for name, member in self.files.items():
            if member.size != listed[name]["size"]:
                raise self.bad(f"{name!r} has {member.size} bytes, {MANIFEST} says {listed[name]['size']}")
        return doc

    @property
    def total(self) -> int:
        return sum(member.size for member in self.files.values())

    def unpack(self, staging: Path, progress: Progress) -> None:
        """Every file into `staging` (created here), checked against the manifest while it is written."""
        staging.mkdir(mode=0o700)
        for name in self.dirs:
            staging.joinpath(*PurePosixPath(name).parts).mkdir(parents=True, exist_ok=True)
        total, done = max(self.total, 1), 0
        for name, member in self.files.items():
            expected = self.manifest["files"][name]
            target = staging.joinpath(*PurePosixPath(name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            sha = hashlib.sha256()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, expected["mode"])
            try:
                with os.fdopen(fd, "wb") as out, self.tar.extractfile(member) as src:
                    while chunk := src.read(CHUNK):
                        sha.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        progress.update(f"{done * 100 // total:3d} % ({size(done)} of {size(total)})")
            except (tarfile.TarError, EOFError) as exc:
                raise self.bad(f"{name!r} cannot be read ({first_line(exc)})") from None
            if sha.hexdigest() != expected["sha256"]:
                raise self.bad(f"{name!r} is damaged: its sha256 is not the one {MANIFEST} lists")

    def close(self) -> None:
        self.tar.close()


def check_target(url: str, data_dir: Path, force: bool) -> list[str]:
    """What the target holds; refused (TargetNotEmpty) unless forced."""
    where = f"database {db.database_name(url)} at {db.host_port(url)}"
    try:
        conn = db.connect(url, "ayon-restore")
    except Exception as exc:
        raise AyonError(f"cannot connect to the {where}: {first_line(exc)}") from None
    try:
        with conn.cursor() as cur:
            cur.execute(RELATIONS)
            tables = [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
    held = []
    if tables:
        held.append(f"the {where} is not empty ({len(tables)} relations, {tables[0]} first)")
    for folder in sorted(layout.PACKAGE_FOLDERS.values()):
        path = Path(data_dir) / folder
        if path.is_dir() and any(path.iterdir()):
            held.append(f"{path} is not empty")
        elif path.exists() and not path.is_dir():
            held.append(f"{path} is not a folder")
    if held and not force:
        raise TargetNotEmpty(f"{held[0]}: restore into an empty database and data folder, or pass --force "
                             "to replace what they hold")
    return held


def restore(url: str, data_dir: Path, path: Path, force: bool, progress: Progress) -> dict:
    """Check the archive and the target, unpack, restore the database, put the packages in place."""
    started = time.monotonic()
    backup = Archive(path)
    try:
        manifest = backup.manifest
        data_dir = Path(data_dir)
        held = check_target(url, data_dir, force)
        progress.step(f"restoring {backup.path}: release {str(manifest.get('version'))[:40]}, schema "
                      f"{manifest['schema']}, {len(backup.files) - 1} package files ({size(backup.total)}), "
                      f"made {str(manifest.get('finished_at'))[:40]}")
        if held:
            progress.step(f"--force: replacing what the target holds ({'; '.join(held)})")
        data_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(data_dir).free
        if backup.total > free:
            raise AyonError(f"{data_dir} has {size(free)} free, the archive unpacks to {size(backup.total)}: "
                            "free some space and run again")
        staging = layout.restore_staging_dir(data_dir)
        shutil.rmtree(staging, ignore_errors=True)  # a restore killed midway left it
        try:
            progress.step(f"checking and unpacking into {staging}")
            backup.unpack(staging, progress)
            step = time.monotonic()
            progress.step(f"restoring the database {db.database_name(url)} at {db.host_port(url)} "
                          "(pg_restore, one transaction)")
            argv = [pgclient.binary("pg_restore"), "--no-owner", "--no-privileges", "--single-transaction",
                    "--exit-on-error", "--dbname", pgclient.DSN]
            if force:
                argv[1:1] = ["--clean", "--if-exists"]
            pgclient.run([*argv, str(staging / DUMP)], url, "pg_restore",
                         watch=lambda: progress.update(f"pg_restore: {pgclient.elapsed(step)}"))
            progress.step(f"database restored in {pgclient.elapsed(step)}")
            _put_packages(staging, data_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        backup.close()
    progress.step(f"restore done in {pgclient.elapsed(started)}: start the instance, setup brings the schema "
                  "up to date if the backup is older")
    return manifest


def _put_packages(staging: Path, data_dir: Path) -> None:
    for folder in sorted(layout.PACKAGE_FOLDERS.values()):
        source, target = staging / PACKAGES / folder, data_dir / folder
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # empty, or --force
        elif target.exists() or target.is_symlink():
            target.unlink()
        if source.is_dir():
            os.rename(source, target)
