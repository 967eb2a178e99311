"""The pool, transactions and advisory locks against the real PostgreSQL."""

import threading

import psycopg2
import pytest

from server.core import db
from tests.apiclient import wait_for


def test_transaction_commits_and_rolls_back(database):
    database.execute("CREATE TABLE t (n int)")
    with database.transaction() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(psycopg2.errors.DivisionByZero):
        with database.transaction() as cur:
            cur.execute("INSERT INTO t VALUES (2)")
            cur.execute("SELECT 1/0")
    assert database.fetchall("SELECT n FROM t") == [(1,)]


def test_advisory_lock_excludes_a_second_session(database_url):
    first, second = db.connect(database_url), db.connect(database_url)
    try:
        assert db.try_advisory_lock(first, "ayon.test")
        assert not db.try_advisory_lock(second, "ayon.test")
        first.close()
        # The server releases a closed session's locks when its backend exits, a moment later.
        wait_for(lambda: db.try_advisory_lock(second, "ayon.test"), 10, "the lock freed by the closed session")
    finally:
        second.close()


def test_pool_is_thread_safe_and_bounded(database):
    seen = []

    def work():
        for _ in range(20):
            seen.append(database.fetchone("SELECT pg_backend_pid()")[0])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 160
    assert len(set(seen)) <= database.size


def test_pool_survives_a_postgres_restart(pg, database):
    if pg.embedded is None:
        pytest.skip("needs the embedded server to restart it")
    before = database.fetchone("SELECT pg_backend_pid()")[0]
    pg.embedded.stop()
    pg.embedded.start()
    after = database.fetchone("SELECT pg_backend_pid()")[0]
    assert after != before
    assert database.fetchone("SELECT 1") == (1,)
