"""Data that crosses releases during a rolling upgrade is read past fields the reader does not know.

Release N+1 may add a field to a NOTIFY payload, a column to events, a figure to a heartbeat
(tests/test_mixed_version.py runs both releases for real; the configuration merge keeping keys
it does not know is tests/test_config_writers.py). Each reader here gets such a field, written
as N+1 would write it, and must read what it knows and ignore the rest.
"""

import datetime
import json

from server.api import stream
from server.core import events
from server.metrics import scrape
from maintenance.scheduler import MaintenanceDaemon


def test_an_event_notification_with_a_field_of_a_newer_release_is_decoded():
    doc = {"id": "3f0c3a52-7b7c-4ad1-9a3c-8b3e5f1d2a10", "topic": "server.test", "status": "finished",
           "description": "d", "updated_at": "2026-12-07T10:00:00.000000+00:00",
           "origin": "release N+1", "shard": {"n": 1}}
    decoded = stream._decode(doc)
    assert decoded == (doc["id"], "server.test", "finished", "d",
                       datetime.datetime(2026, 12, 7, 10, tzinfo=datetime.timezone.utc))


def test_a_maintenance_request_with_a_field_of_a_newer_release_still_wakes_the_daemon():
    payload = {"id": "x", "topic": events.MAINTENANCE_REQUEST, "status": "pending", "priority": "high"}
    assert MaintenanceDaemon.notified(None, events.CHANNEL, payload) is True


def test_events_with_a_column_of_a_newer_release_are_read_and_notified(database):
    database.execute("ALTER TABLE events ADD COLUMN origin text")
    listener = events.Listener(database.url, (events.CHANNEL,), "ayon-test-listen")
    try:
        with database.transaction() as cur:
            cur.execute("INSERT INTO events (topic, status, origin) VALUES ('server.test', 'finished', "
                        "'release N+1') RETURNING id")
            event_id = str(cur.fetchone()[0])
        found = events.get(database, event_id)
        assert found["topic"] == "server.test" and "origin" not in found
        assert any(payload.get("id") == event_id for _, payload in listener.wait(5))
        page = json.loads(database.fetchone("SELECT doc FROM events WHERE id = %s", (event_id,))[0])
        assert page["id"] == event_id
    finally:
        listener.close()


def test_heartbeat_figures_of_a_newer_release_are_ignored_by_the_scrape(database):
    info = {"lag_seconds": 1.5, "spool_bytes": 10, "shards": 4, "lag_by_shard": {"a": 1}}
    database.execute("INSERT INTO instances (instance_id, program, pid, version, info, schema_known) "
                     "VALUES ('newer', 'logcollector', 1, '9.9.9', %s, 9999)", (json.dumps(info),))
    text = scrape(database).decode()
    assert 'ayon_logcollector_lag_seconds{ayon_instance="newer"} 1.5' in text
    assert "shard" not in text
