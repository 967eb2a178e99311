"""Events: dispatch, update, query and NOTIFY, on the real PostgreSQL."""

import time

from server.core import events


def test_dispatch_update_get(database):
    event_id = events.dispatch(database, "server.test", description="start", payload={"a": 1}, sender="t")
    created = events.get(database, event_id)
    assert created["status"] == "pending" and created["payload"] == {"a": 1} and created["sender"] == "t"
    updated = events.update(database, event_id, status="in_progress", description="step 1")
    assert updated["status"] == "in_progress" and updated["description"] == "step 1"
    assert updated["updated_at"] > created["updated_at"]
    assert events.update(database, event_id, status="finished", only_if=("pending",)) is None
    assert events.get(database, event_id)["status"] == "in_progress"
    assert events.get(database, "not-a-uuid") is None


def test_query_by_topic_prefix_and_status(database):
    ids = [events.dispatch(database, topic, status=status) for topic, status in
           [("server.a", "finished"), ("server.b", "pending"), ("action.x", "pending"), ("server_c", "pending")]]
    assert [e["id"] for e in events.query(database, topic="server.*")] == [ids[1], ids[0]]
    assert [e["id"] for e in events.query(database, topic="server.a")] == [ids[0]]
    assert {e["id"] for e in events.query(database, status="pending")} == {ids[1], ids[2], ids[3]}
    page1 = events.query(database, limit=2)
    page2 = events.query(database, limit=2, before=(page1[-1]["created_at"], page1[-1]["id"]))
    assert [e["id"] for e in page1 + page2] == ids[::-1]


def test_listener_in_another_connection_sees_changes(database, database_url):
    listener = events.Listener(database_url)
    try:
        event_id = events.dispatch(database, "server.maintenance", status="in_progress")
        events.update(database, event_id, status="finished")
        seen, deadline = [], time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            seen += [p for _, p in listener.wait(1.0) if p["id"] == event_id]
        assert [p["status"] for p in seen] == ["in_progress", "finished"]
        assert seen[0]["topic"] == "server.maintenance"
    finally:
        listener.close()
