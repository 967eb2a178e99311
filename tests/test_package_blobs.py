"""Package content in package_blobs: stored byte for byte by binary COPY, once, even by concurrent uploads."""

import hashlib
import os
import threading
import zipfile

from server.core import packages
from tests.apiclient import wait_for
from tests.test_archive import make_zip


def stored(database, sha256: str) -> bytes:
    return bytes(database.fetchone("SELECT data FROM package_blobs WHERE sha256 = %s", (sha256,))[0])


def test_content_is_stored_byte_for_byte(database):
    # Every byte value, the COPY format's own markers among them, and a part larger than one COPY chunk.
    content = bytes(range(256)) * 64 + b"PGCOPY\n\xff\r\n\x00" + b"\xff\xff" + os.urandom(packages._COPY_CHUNK + 3)
    body = make_zip([("payload.bin", content)], manifest="name: blob\nversion: '1'\n", compression=zipfile.ZIP_STORED)
    assert len(body) > packages._COPY_CHUNK and b"PGCOPY" in body
    with database.transaction() as cur:
        package = packages.store(cur, body, "addon")
    assert package["sha256"] == hashlib.sha256(body).hexdigest()
    assert stored(database, package["sha256"]) == body
    assert database.fetchone("SELECT size FROM package_blobs WHERE sha256 = %s", (package["sha256"],)) == (len(body),)


def test_a_re_upload_touches_the_one_row(database):
    body = make_zip([("a.txt", "a")], manifest="name: blob\nversion: '1'\n")
    sha256 = hashlib.sha256(body).hexdigest()
    with database.transaction() as cur:
        packages.store_blob(cur, sha256, body)
    database.execute("UPDATE package_blobs SET created_at = now() - interval '30 days'")
    with database.transaction() as cur:
        packages.store_blob(cur, sha256, body)
    assert database.fetchone("SELECT count(*), bool_and(created_at > now() - interval '1 minute') FROM package_blobs") \
        == (1, True)


def test_concurrent_uploads_of_the_same_content_both_succeed_and_store_it_once(database):
    body = make_zip([("a.txt", "same")], manifest="name: blob\nversion: '1'\n")
    sha256 = hashlib.sha256(body).hexdigest()
    second_waiting = threading.Event()
    errors = []

    def second():
        try:
            with database.transaction() as cur:
                second_waiting.set()
                # Its COPY waits on the first one's uncommitted row, then meets the unique key.
                packages.store_blob(cur, sha256, body)
                cur.execute("SELECT count(*) FROM package_blobs")
                assert cur.fetchone() == (1,)
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    with database.transaction() as cur:
        packages.store_blob(cur, sha256, body)
        thread = threading.Thread(target=second)
        thread.start()
        assert second_waiting.wait(10)

        # The second session must be blocked on this transaction's row before it commits.
        def blocked():
            return database.fetchone(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )[0] == 1

        wait_for(blocked, 10, "the second upload to wait on the first one's row")
    thread.join(20)
    assert not thread.is_alive() and errors == []
    assert database.fetchone("SELECT count(*) FROM package_blobs") == (1,)
    assert stored(database, sha256) == body
