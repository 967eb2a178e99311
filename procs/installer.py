"""The installer program: every active package unpacked under this instance's AYON_DATA_DIR.

Addons go to `addons/<name>/<version>/`, dependency packages to
`dependency_packages/<name>/<version>/`. A package is verified (sha256),
unpacked into `.installing/` inside the data folder by the hostile-archive
safe unpacker, then renamed into place: a folder at its final path is
always complete, even if the installer is killed mid-install. State per
instance lives in `package_installs`; failures retry with backoff up to
`installer.max_attempts`. NOTIFY `ayon_packages` wakes it; the
configuration's `installer.poll_interval` is the fallback poll.
"""

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from server.core import archive, events, layout, packages
from server.core.program import Daemon

BACKOFF_BASE = 10  # seconds before the first retry, doubled each attempt
BACKOFF_MAX = 3600
UNHEALTHY_RETRY = 5.0  # seconds between ticks while PostgreSQL is unreachable


@dataclass(frozen=True)
class Work:
    name: str
    version: str
    kind: str
    sha256: str
    active: bool
    status: str
    attempts: int
    due: bool


class Installer(Daemon):
    """Installs every active package on this instance, removes uninstalled ones."""

    program = "installer"
    channels = (events.PACKAGES_CHANNEL,)
    config_keys = ("installer.",)

    def __init__(self):
        super().__init__()
        self.queue_depth = 0
        self.seconds_to_retry: float | None = None
        self.healthy = True

    def heartbeat_info(self) -> dict:
        return {"queue_depth": self.queue_depth}

    def configure(self, cfg) -> None:
        self.poll_interval = cfg.installer.poll_interval
        self.max_attempts = cfg.installer.max_attempts

    # --- start ---

    def prepare(self) -> None:
        self.root = Path(self.settings.data_dir)
        self.staging = layout.staging_dir(self.root)
        self.staging.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        # What a killed installer left half-done; nothing there was ever visible.
        for leftover in self.staging.iterdir():
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()

    def _lock_data_dir(self) -> None:
        """One installer per data folder: a second one waits (a restart overlapping the old process)."""
        self.lock_fd = os.open(layout.installer_lock(self.root), os.O_RDWR | os.O_CREAT, 0o644)
        layout.wait_for_lock(self.lock_fd, self.stop, lambda: self.log.info(
            "another installer uses %s; waiting for it to stop", self.root), every=1.0)

    def target_of(self, kind: str, name: str, version: str) -> Path:
        return layout.package_dir(self.root, kind, name, version)

    # --- one pass ---

    def tick(self) -> None:
        self.healthy = False
        work = self._reconcile()
        self._remove_unlisted(work)
        for item in work:
            if self.stop.is_set():
                break
            if not item.active:
                if item.status != "removed":
                    self._uninstall(item)
            elif item.status == "pending" or (item.status == "failed" and item.due
                                              and item.attempts < self.max_attempts):
                self._install(item)
            elif item.status == "installed" and not self.target_of(item.kind, item.name, item.version).is_dir():
                self.log.warning("%s %s is missing from disk; installing it again", item.name, item.version)
                self._install(item)
        self._measure()
        self.healthy = True

    def _reconcile(self) -> list[Work]:
        """Request every active package for this instance (catching up after a start), then list the work."""
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO package_installs (instance_id, name, version, status) "
                "SELECT %s, name, version, 'pending' FROM packages WHERE active "
                "ON CONFLICT (instance_id, name, version) DO UPDATE SET status = 'pending', reason = NULL, "
                "attempts = 0, next_attempt_at = NULL, updated_at = now() WHERE package_installs.status = 'removed'",
                (self.settings.instance_id,),
            )
            cur.execute(
                "SELECT p.name, p.version, p.kind, p.sha256, p.active, i.status, i.attempts, "
                "coalesce(i.next_attempt_at <= now(), true) "
                "FROM packages p JOIN package_installs i ON i.name = p.name AND i.version = p.version "
                "WHERE i.instance_id = %s ORDER BY p.created_at, p.name, p.version",
                (self.settings.instance_id,),
            )
            return [Work(*row) for row in cur.fetchall()]

    def _remove_unlisted(self, work: list[Work]) -> None:
        """Delete package folders on disk that no active package accounts for."""
        wanted = {(w.kind, w.name, w.version) for w in work if w.active}
        for kind, folder in layout.PACKAGE_FOLDERS.items():
            base = self.root / folder
            if not base.is_dir():
                continue
            for name_dir in base.iterdir():
                for version_dir in (name_dir.iterdir() if name_dir.is_dir() else [name_dir]):
                    if (kind, name_dir.name, version_dir.name) not in wanted:
                        self.log.info("removing %s, which is not an active package", version_dir)
                        self._discard(version_dir)
                if name_dir.is_dir() and not any(name_dir.iterdir()):
                    name_dir.rmdir()

    def _discard(self, path: Path) -> None:
        """Make a folder vanish at once (rename), then delete it at leisure."""
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
            return
        doomed = Path(tempfile.mkdtemp(prefix="removing-", dir=self.staging))
        os.rename(path, doomed / "tree")
        shutil.rmtree(doomed, ignore_errors=True)

    def _install(self, item: Work) -> None:
        target = self.target_of(item.kind, item.name, item.version)
        started = time.monotonic()
        work_dir = None
        try:
            row = self.db.fetchone("SELECT data FROM package_blobs WHERE sha256 = %s", (item.sha256,))
            if row is None:
                raise archive.UnsafeArchive(f"the stored content {item.sha256} is missing")
            data = bytes(row[0])
            archive.verify_sha256(data, item.sha256)
            work_dir = Path(tempfile.mkdtemp(prefix=f"{item.name}-{item.version}-", dir=self.staging))
            size = archive.extract(data, work_dir)
            self._check_manifest(work_dir, item)
            self._publish(work_dir, target)
            work_dir = None
        except (archive.UnsafeArchive, packages.PackageError) as exc:
            self._failed(item, str(exc))
            return
        except OSError as exc:
            self._failed(item, f"cannot write {exc.filename or target}: {exc.strerror or exc}")
            return
        finally:
            if work_dir is not None:
                shutil.rmtree(work_dir, ignore_errors=True)
        self._set_state(item, "installed", None)
        self.log.info("installed %s %s (%d bytes) in %.2f s", item.name, item.version, size,
                      time.monotonic() - started)

    @staticmethod
    def _check_manifest(work_dir: Path, item: Work) -> None:
        path = work_dir / packages.MANIFEST
        if not path.is_file():
            raise packages.PackageError(f"{packages.MANIFEST} is missing at the archive's root")
        manifest = packages.parse_manifest(path.read_bytes()[: packages.MANIFEST_MAX_BYTES])
        if (manifest.name, manifest.version) != (item.name, item.version):
            raise packages.PackageError(
                f"{packages.MANIFEST} names {manifest.name} {manifest.version}, not {item.name} {item.version}"
            )

    def _publish(self, work_dir: Path, target: Path) -> None:
        """Rename the unpacked tree into place; an old copy is moved aside first, then deleted."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            self._discard(target)
        os.rename(work_dir, target)

    def _uninstall(self, item: Work) -> None:
        target = self.target_of(item.kind, item.name, item.version)
        if target.exists() or target.is_symlink():
            self._discard(target)
        if target.parent.is_dir() and not any(target.parent.iterdir()):
            target.parent.rmdir()
        self._set_state(item, "removed", None)
        self.log.info("removed %s %s", item.name, item.version)

    def _set_state(self, item: Work, status: str, reason: str | None) -> None:
        self.db.execute(
            "UPDATE package_installs SET status = %s, reason = %s, next_attempt_at = NULL, updated_at = now() "
            "WHERE instance_id = %s AND name = %s AND version = %s",
            (status, reason, self.settings.instance_id, item.name, item.version),
        )

    def _failed(self, item: Work, reason: str) -> None:
        attempts = item.attempts + 1
        final = attempts >= self.max_attempts
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempts - 1))
        self.db.execute(
            "UPDATE package_installs SET status = 'failed', reason = %s, attempts = %s, updated_at = now(), "
            "next_attempt_at = CASE WHEN %s THEN NULL ELSE now() + make_interval(secs => %s) END "
            "WHERE instance_id = %s AND name = %s AND version = %s",
            (reason, attempts, final, delay, self.settings.instance_id, item.name, item.version),
        )
        then = "giving up" if final else f"retry in {delay} s"
        self.log.warning("cannot install %s %s (attempt %d of %d, %s): %s", item.name, item.version,
                         attempts, self.max_attempts, then, reason)

    def _measure(self) -> None:
        """Queue depth for the heartbeat, and when the next retry falls due."""
        row = self.db.fetchone(
            "SELECT count(*) FILTER (WHERE i.status = 'pending' OR (i.status = 'failed' AND i.attempts < %s)), "
            "extract(epoch FROM min(i.next_attempt_at - now()) FILTER (WHERE i.status = 'failed' "
            "AND i.attempts < %s)) "
            "FROM package_installs i JOIN packages p ON p.name = i.name AND p.version = i.version AND p.active "
            "WHERE i.instance_id = %s",
            (self.max_attempts, self.max_attempts, self.settings.instance_id),
        )
        self.queue_depth = row[0]
        self.seconds_to_retry = None if row[1] is None else max(0.0, float(row[1]))

    # --- between passes ---

    def interval(self) -> float:
        if not self.healthy:
            return UNHEALTHY_RETRY
        if self.seconds_to_retry is not None:
            return min(float(self.poll_interval), self.seconds_to_retry + 0.05)
        return float(self.poll_interval)


if __name__ == "__main__":
    Installer.main()
