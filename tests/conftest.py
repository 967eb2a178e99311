"""Fixtures: a real PostgreSQL for the session, a fresh database per test."""

import os
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from server.core.db import Database
from tests.pg import TestServer

ROOT = Path(__file__).resolve().parent.parent

# Property tests draw the same examples on every run: a run that passes passes again, and a case
# found once is kept as an explicit @example (the suite must be deterministic on any machine).
hypothesis_settings.register_profile("deterministic", derandomize=True, database=None)
hypothesis_settings.load_profile("deterministic")


@pytest.fixture(scope="session")
def pg():
    server = TestServer()
    yield server
    server.close()


@pytest.fixture
def database_url(pg):
    url = pg.new_database()
    yield url
    pg.drop_database(url)


@pytest.fixture
def empty_database_url(pg):
    url = pg.new_database(migrated=False)
    yield url
    pg.drop_database(url)


@pytest.fixture
def database(database_url):
    database = Database(database_url, size=4, application_name="ayon-test")
    yield database
    database.close()


@pytest.fixture
def env(tmp_path, database_url):
    """An environment for a child process of ours, pointed at this test's database."""
    values = {
        key: value for key, value in os.environ.items() if not key.startswith("AYON_")
    }
    values.update(
        AYON_POSTGRES_URL=database_url,
        AYON_DATA_DIR=str(tmp_path / "data"),
        AYON_INSTANCE_ID="test",
        AYON_ADMIN_TOKEN="test-token",
        AYON_DB_WAIT_TIMEOUT="10",
        # No load balancer in front: a stop does not drain (tests/test_drain.py sets its own).
        AYON_DRAIN_SECONDS="0",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    return values


@pytest.fixture(scope="session", params=["transaction", "session"])
def bouncer(request, pg):
    """A real PgBouncer in front of the session's PostgreSQL, in each pool mode (tests/fleet.py)."""
    from tests.fleet import PgBouncer

    bouncer = PgBouncer(pg.server_url, request.param).start()
    yield bouncer
    bouncer.stop()


@pytest.fixture
def pooled_url(bouncer, database_url):
    """This test's database through the pooler."""
    return bouncer.url(database_url)


@pytest.fixture
def haproxy():
    """Start a real HAProxy in front of {name: "host:port"} (tests/fleet.py HAProxy); stopped at the end."""
    from tests.fleet import HAProxy

    started = []

    def start(servers: dict[str, str], check_path: str = "/health/ready") -> HAProxy:
        started.append(HAProxy(servers, check_path))
        return started[-1].start()

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def standby(pg):
    """A streaming standby of the embedded primary (tests/fleet.py Standby); stopped at the end."""
    from tests.fleet import Standby

    if pg.embedded is None:
        pytest.skip("a standby needs the embedded PostgreSQL (AYON_TEST_POSTGRES_URL is set)")
    standby = Standby(pg.embedded).start()
    yield standby
    standby.stop()
