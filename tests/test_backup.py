"""Backup and restore for real: a populated instance round-trips; a non-empty target, hostile archives are refused."""

import io
import json
import os
import re
import subprocess
import sys
import tarfile

import falcon.testing
import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

from server.core import events
from tests.apiclient import AUTH, make_app
from tests.conftest import ROOT
from tests.test_archive import make_zip
from tests.test_installer import DEMO, files_under, start_installer, states
from tests.test_webactions import wait_for

# What a restore must give back, compared row for row.
TABLES = {
    "events": "SELECT * FROM events ORDER BY id",
    "logs": "SELECT * FROM logs ORDER BY ts, message",
    "config": "SELECT data FROM server_config",
    "packages": "SELECT * FROM packages ORDER BY name, version",
    "blobs": "SELECT * FROM package_blobs ORDER BY sha256",
    "installs": "SELECT * FROM package_installs ORDER BY name, version, instance_id",
    "schema": "SELECT version, name, sha256 FROM schema_migrations ORDER BY version",
}
RELATIONS = ("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
             "WHERE n.nspname = 'public'")


def rows(url: str) -> dict:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            found = {}
            for name, sql in TABLES.items():
                cur.execute(sql)
                found[name] = cur.fetchall()
            return found
    finally:
        conn.close()


def relations(url: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(RELATIONS)
            return cur.fetchone()[0]
    finally:
        conn.close()


def backup(env: dict, url: str, data_dir, *args: str) -> subprocess.CompletedProcess:
    environ = {**env, "AYON_POSTGRES_URL": url, "AYON_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "backup", *map(str, args)], env=environ, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def secret_of(url: str) -> str:
    return parse_dsn(url).get("password") or "no-password-in-this-url"


@pytest.fixture
def populated(env, database, database_url, tmp_path):
    """An instance with events, logs, a configuration change and an installed addon; its archive."""
    source = tmp_path / "source"
    installer = start_installer({**env, "AYON_DATA_DIR": str(source)}, tmp_path, "source")
    client = falcon.testing.TestClient(make_app(database_url, AYON_DATA_DIR=str(source)), headers=AUTH)
    try:
        body = make_zip([("web/index.html", "<h1>demo</h1>"), ("bin/tool", "#!/bin/sh\n"), ("empty/", "")],
                        manifest=DEMO)
        assert client.simulate_post("/api/addons", body=body,
                                    headers={"Content-Type": "application/zip"}).status_code == 201
        patched = client.simulate_patch("/api/config", json={"maintenance": {"time": "04:30", "timezone":
                                                                             "Europe/Prague"}})
        assert patched.status_code == 200, patched.text
        first = events.dispatch(database, "studio.publish", status="finished", description="shot 010",
                                payload={"shot": "010", "frames": [1001, 1100]})
        events.dispatch(database, "studio.review", description="depends", depends_on=first)
        database.execute(
            "INSERT INTO logs (ts, level, instance, program, pid, logger, message, extras) VALUES "
            "(now() - interval '2 days', 'ERROR', 'source', 'server', 7, 'ayon', 'old failure', '{\"n\": 1}'), "
            "(now(), 'INFO', 'source', 'installer', 8, 'ayon', 'installed ✓', NULL)")
        wait_for(lambda: states(database, "demo", "1.0.0").get("source") == "installed", 30, "the addon installed")
    finally:
        installer.stop()
    archive = tmp_path / "instance.tar"
    result = backup(env, database_url, source, archive)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert secret_of(database_url) not in output
    assert "dumping the database" in result.stdout and f"backup written: {archive}" in result.stdout
    return {"url": database_url, "data": source, "archive": archive, "output": output}


def test_a_populated_instance_round_trips_into_an_empty_one(populated, env, pg, tmp_path):
    with tarfile.open(populated["archive"]) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
    assert names[-1] == "manifest.json" and names[0] == "packages/addons"
    assert manifest["format"] == "ayon-backup" and manifest["schema"] == rows(populated["url"])["schema"][-1][0]
    assert manifest["files"]["packages/addons/demo/1.0.0/bin/tool"]["mode"] == 0o644  # zip had no mode bits
    assert set(manifest) >= {"version", "started_at", "finished_at", "postgres", "instance_id"}

    target_url, target_data = pg.new_database(migrated=False), tmp_path / "target"
    try:
        result = backup(env, target_url, target_data, "--restore", populated["archive"])
        assert result.returncode == 0, result.stderr
        assert secret_of(target_url) not in result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"restoring {populated['archive']}: release ")
        assert lines[-1].startswith("restore done in ")
        before, after = rows(populated["url"]), rows(target_url)
        for table in TABLES:
            assert after[table] == before[table], table
        assert len(after["events"]) >= 2 and len(after["logs"]) == 2 and after["installs"]
        assert after["config"][0][0]["maintenance"]["time"] == "04:30"
        assert files_under(target_data / "addons") == files_under(populated["data"] / "addons")
        assert (target_data / "addons" / "demo" / "1.0.0" / "empty").is_dir()
        assert not (target_data / ".restoring").exists()

        # The same target again: not empty now, so refused, and left as it is.
        again = backup(env, target_url, target_data, "--restore", populated["archive"])
        assert again.returncode == 2
        where = f"{target_url.rsplit('/', 1)[1]} at {parse_dsn(target_url)['host']}:{parse_dsn(target_url)['port']}"
        assert re.fullmatch(rf"Error: the database {where} is not empty \(\d+ relations, \w+ first\): restore "
                            r"into an empty database and data folder, or pass --force to replace what they hold\n",
                            again.stderr), again.stderr
        assert again.stdout == ""
        assert rows(target_url) == after

        # --force replaces what the target holds: one changed row comes back as it was in the backup.
        conn = psycopg2.connect(target_url)
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE logs SET message = 'changed since'")
        conn.close()
        (target_data / "addons" / "stray").mkdir()
        forced = backup(env, target_url, target_data, "--restore", "--force", populated["archive"])
        assert forced.returncode == 0, forced.stderr
        assert "--force: replacing what the target holds" in forced.stdout
        assert rows(target_url) == before
        assert files_under(target_data / "addons") == files_under(populated["data"] / "addons")
        assert not (target_data / "addons" / "stray").exists()
    finally:
        pg.drop_database(target_url)


def test_a_data_folder_with_packages_is_refused(populated, env, pg, tmp_path):
    target_url, target_data = pg.new_database(migrated=False), tmp_path / "target"
    (target_data / "dependency_packages" / "left").mkdir(parents=True)
    try:
        result = backup(env, target_url, target_data, "--restore", populated["archive"])
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            f"Error: {target_data / 'dependency_packages'} is not empty: restore into an empty database and data "
            "folder, or pass --force to replace what they hold"]
        assert relations(target_url) == 0 and not (target_data / "addons").exists()
    finally:
        pg.drop_database(target_url)


def _rewrite(source, target, change) -> None:
    """A copy of the archive whose members went through `change(info, data)` -> [(info, data), ...]."""
    with tarfile.open(source) as src, tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as out:
        for info in src.getmembers():
            data = src.extractfile(info).read() if info.isreg() else b""
            for new, body in change(info, data):
                new.size = len(body) if new.isreg() else 0
                out.addfile(new, io.BytesIO(body) if new.isreg() else None)


def _flipped_dump(info, data):
    if info.name == "database.dump":
        data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
    return [(info, data)]


def _with_link(info, data):
    if info.name != "manifest.json":
        return [(info, data)]
    link = tarfile.TarInfo("packages/addons/demo/escape")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    return [(link, b""), (info, data)]


def _with_dotdot(info, data):
    if info.name != "manifest.json":
        return [(info, data)]
    evil = tarfile.TarInfo("packages/addons/../../evil.sh")
    return [(evil, b"boom"), (info, data)]


def _without_manifest(info, data):
    return [] if info.name == "manifest.json" else [(info, data)]


def _other_schema(info, data):
    if info.name == "manifest.json":
        data = json.dumps({**json.loads(data), "schema": 9999}).encode()
    return [(info, data)]


HOSTILE = {
    "truncated": ("cut", "a damaged or cut short tar (unexpected end of data)"),
    "not a tar": ("junk", "not a backup archive (not a tar file: "),
    "flipped byte in the dump": (_flipped_dump, "'database.dump' is damaged: its sha256 is not the one manifest.json "
                                                "lists"),
    "symbolic link": (_with_link, "entry 'packages/addons/demo/escape' is a symbolic link"),
    "dot dot": (_with_dotdot, "entry 'packages/addons/../../evil.sh': path escapes the package ('..')"),
    "no manifest": (_without_manifest, "no manifest.json: not a backup, or cut short"),
    "newer schema": (_other_schema, "made with schema 9999 (release "),
}


def test_hostile_or_damaged_archives_are_refused_and_the_target_untouched(populated, env, pg, tmp_path):
    good = populated["archive"].read_bytes()
    target_url = pg.new_database(migrated=False)
    try:
        for name, (change, reason) in HOSTILE.items():
            bad = tmp_path / f"{name.replace(' ', '-')}.tar"
            if change == "cut":
                bad.write_bytes(good[: len(good) // 2])
            elif change == "junk":
                bad.write_bytes(b"PK\x03\x04 not a tar at all" * 40)
            else:
                _rewrite(populated["archive"], bad, change)
            data = tmp_path / f"data-{bad.stem}"
            result = backup(env, target_url, data, "--restore", bad)
            assert result.returncode == 2, (name, result.stdout, result.stderr)
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"Error: {bad}: ") and reason in lines[0], (name, lines)
            assert relations(target_url) == 0, name
            assert not data.exists() or not any(data.iterdir()), (name, list(data.iterdir()))
    finally:
        pg.drop_database(target_url)


def test_the_archive_is_written_whole_or_not_at_all(env, tmp_path, pg):
    """A database that cannot be read leaves no archive (and no part of one) behind; the password is not shown."""
    url = pg.url_for("no_such_database")
    target = tmp_path / "never.tar"
    result = backup(env, url, tmp_path / "data", target)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "no_such_database" in result.stderr, result.stderr
    assert secret_of(url) not in result.stdout + result.stderr
    assert not [name for name in os.listdir(tmp_path) if name.startswith("never")]
