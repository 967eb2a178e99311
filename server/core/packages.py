"""Packages: manifest validation, storage deduplicated by sha256, install requests and states.

A package is a zip with `package.yaml` at its root (`name`: a lowercase
slug, `version`: a version string). The content is stored once in
`package_blobs`; `packages` lists what should be installed; each
instance's installer records what it did in `package_installs`.
"""

import re
import struct
from dataclasses import dataclass

import psycopg2.errors

from server.core import archive, yamldoc
from server.core.errors import AyonError, shown

KINDS = ("addon", "dependency_package")
MANIFEST = "package.yaml"
MANIFEST_MAX_BYTES = 64 * 1024
NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")


class PackageError(AyonError):
    """A package that cannot be accepted; the message names the problem."""


class PackageConflict(PackageError):
    """The same name and version already exist with other content or kind."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise PackageError(f"kind {shown(kind)} is not one of {', '.join(KINDS)}")
    return kind


def valid_name(name: str) -> bool:
    return bool(NAME_RE.fullmatch(name))


def valid_version(version: str) -> bool:
    return bool(VERSION_RE.fullmatch(version))


def parse_manifest(text: bytes) -> Manifest:
    """Validate the content of package.yaml."""
    try:
        doc = yamldoc.load(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise PackageError(f"{MANIFEST} is not UTF-8 text") from None
    except yamldoc.Refused as exc:
        raise PackageError(f"{MANIFEST}: {exc}") from None
    if not isinstance(doc, dict):
        raise PackageError(f"{MANIFEST} must be a mapping with 'name' and 'version'")
    for key in ("name", "version"):
        if key not in doc:
            raise PackageError(f"{MANIFEST} has no '{key}'")
    name, version = doc["name"], doc["version"]
    if not isinstance(name, str) or not valid_name(name):
        raise PackageError(
            f"{MANIFEST}: name {shown(name)} is not a lowercase slug "
            "(a letter, then up to 63 of a-z, 0-9, '-', '_')"
        )
    if not isinstance(version, str):
        raise PackageError(f"{MANIFEST}: version {shown(version)} must be a string (quote it: '{shown(version)}')")
    if not valid_version(version):
        raise PackageError(
            f"{MANIFEST}: version {shown(version)} is not a version string "
            "(a letter or digit, then up to 63 of letters, digits, '.', '+', '-', '_')"
        )
    return Manifest(name, version)


def validate(data: bytes, limits: archive.Limits = archive.DEFAULT_LIMITS) -> Manifest:
    """Check an uploaded zip: a safe archive with a valid package.yaml at its root."""
    with archive.open_zip(data) as zf:
        archive.inspect(zf, limits)
        try:
            info = zf.getinfo(MANIFEST)
        except KeyError:
            raise PackageError(f"{MANIFEST} is missing at the archive's root") from None
        if info.file_size > MANIFEST_MAX_BYTES:
            raise PackageError(f"{MANIFEST} is larger than {MANIFEST_MAX_BYTES} bytes")
        try:
            text = zf.read(info)
        except archive.CORRUPT + (OSError,) as exc:
            raise PackageError(f"{MANIFEST} is corrupt ({exc})") from None
    return parse_manifest(text)


# One package_blobs row in PostgreSQL's binary COPY format: the content goes as it is, where a
# bytea literal (psycopg2.Binary) doubled it as hex and cost 2.4 s for 60 MB.
_COPY_BLOB = "COPY package_blobs (sha256, data, size) FROM STDIN (FORMAT binary)"
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_COPY_CHUNK = 4 * 1024 * 1024


class _CopyRow:
    """A file-like reader of one binary COPY row, handing out the content in chunks without copying it whole."""

    def __init__(self, sha256: str, data: bytes):
        key = sha256.encode()
        self.parts = [_COPY_HEADER + struct.pack("!hi", 3, len(key)) + key + struct.pack("!i", len(data)),
                      memoryview(data), struct.pack("!iq", 8, len(data)) + _COPY_TRAILER]

    def read(self, size: int = -1) -> bytes:
        while self.parts:
            part = self.parts[0]
            if len(part) <= size or size < 0:
                self.parts.pop(0)
                if len(part):
                    return bytes(part)
                continue
            self.parts[0] = part[size:]
            return bytes(part[:size])
        return b""


def store_blob(cur, sha256: str, data: bytes) -> None:
    """Store a package's content once under its sha256, in the caller's transaction.

    On a re-upload, touching the row locks it and restarts the maintenance grace
    period, so an orphan-blob cleanup cannot delete it between here and the
    package row referencing it.
    """
    touch = "UPDATE package_blobs SET created_at = now() WHERE sha256 = %s"
    cur.execute(touch, (sha256,))
    if cur.rowcount:
        return
    cur.execute("SAVEPOINT blob")
    try:
        cur.copy_expert(_COPY_BLOB, _CopyRow(sha256, data), size=_COPY_CHUNK)
    except psycopg2.errors.UniqueViolation:
        # The same content, stored by a concurrent upload that committed first.
        cur.execute("ROLLBACK TO SAVEPOINT blob")
        cur.execute(touch, (sha256,))
    cur.execute("RELEASE SAVEPOINT blob")


def store(cur, data: bytes, kind: str) -> dict:
    """Validate and store a package, then request its install on every known instance.

    Returns the package with `created` (False when the same content was already there).
    """
    check_kind(kind)
    manifest = validate(data)
    sha256 = archive.sha256_of(data)
    store_blob(cur, sha256, data)
    # The first upload of a name and version inserts its row; a concurrent one waits on that
    # insert (a FOR UPDATE alone locks nothing while there is no row yet, and the losers of a
    # race got UniqueViolation), then finds the winner's row below and is compared with it.
    cur.execute(
        "INSERT INTO packages (name, version, kind, sha256) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (name, version) DO NOTHING",
        (manifest.name, manifest.version, kind, sha256),
    )
    created = cur.rowcount == 1
    if not created:
        cur.execute(
            "SELECT kind, sha256, active FROM packages WHERE name = %s AND version = %s FOR UPDATE",
            (manifest.name, manifest.version),
        )
        row = cur.fetchone()
        if row is None:  # deleted (cleanup_packages) between the two statements
            raise PackageConflict(f"{manifest.name} {manifest.version} changed during the upload; send it again")
        if row[2] and (row[0], row[1]) != (kind, sha256):
            what = "kind" if row[0] != kind else "content"
            raise PackageConflict(
                f"{manifest.name} {manifest.version} already exists with another {what}; "
                "delete it first or give it a new version"
            )
        created = not row[2]
        cur.execute(
            "UPDATE packages SET kind = %s, sha256 = %s, active = true, removed_at = NULL "
            "WHERE name = %s AND version = %s",
            (kind, sha256, manifest.name, manifest.version),
        )
    request_installs(cur, manifest.name, manifest.version)
    return {"name": manifest.name, "version": manifest.version, "kind": kind, "sha256": sha256,
            "size": len(data), "created": created}


def request_installs(cur, name: str, version: str) -> None:
    """A pending install on every instance whose installer has reported; retried from scratch."""
    cur.execute(
        "INSERT INTO package_installs (instance_id, name, version, status) "
        "SELECT DISTINCT instance_id, %s, %s, 'pending' FROM instances WHERE program = 'installer' "
        "ON CONFLICT (instance_id, name, version) DO UPDATE SET status = 'pending', reason = NULL, "
        "attempts = 0, next_attempt_at = NULL, updated_at = now() "
        "WHERE package_installs.status IN ('failed', 'removed')",
        (name, version),
    )


def remove(cur, name: str, version: str) -> bool:
    """Mark a package removed; every installer then deletes its folder. False when not active."""
    cur.execute(
        "UPDATE packages SET active = false, removed_at = now() WHERE name = %s AND version = %s AND active",
        (name, version),
    )
    return cur.rowcount == 1


def listing(cur, include_removed: bool = False) -> list[dict]:
    """Every package with its state on each instance."""
    where = "" if include_removed else "WHERE p.active"
    cur.execute(
        "SELECT p.name, p.version, p.kind, p.sha256, b.size, p.active, p.created_at, p.removed_at "
        f"FROM packages p JOIN package_blobs b USING (sha256) {where} ORDER BY p.name, p.version"
    )
    found = {}
    for name, version, kind, sha256, size, active, created_at, removed_at in cur.fetchall():
        found[(name, version)] = {
            "name": name, "version": version, "kind": kind, "sha256": sha256, "size": size,
            "active": active, "created_at": created_at, "removed_at": removed_at, "instances": [],
        }
    cur.execute(
        "SELECT name, version, instance_id, status, reason, attempts, next_attempt_at, updated_at "
        "FROM package_installs ORDER BY instance_id"
    )
    for name, version, instance_id, status, reason, attempts, next_at, updated_at in cur.fetchall():
        package = found.get((name, version))
        if package is not None:
            package["instances"].append({
                "instance_id": instance_id, "status": status, "reason": reason, "attempts": attempts,
                "next_attempt_at": next_at, "updated_at": updated_at,
            })
    return list(found.values())
