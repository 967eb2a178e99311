"""GET and PATCH /api/config."""

from server.core import events
from tests.apiclient import assert_error, client  # noqa: F401  (fixture)


def test_get_has_every_declared_key(client):
    result = client.simulate_get("/api/config")
    assert result.status_code == 200
    doc = result.json
    assert doc["maintenance"]["time"] == "03:00"
    assert doc["maintenance"]["tasks"]["vacuum"]["enabled"] is True
    assert doc["instances"]["stale_after"] == 30


def test_patch_merges_and_dispatches_an_event(client, database):
    result = client.simulate_patch("/api/config", json={"maintenance": {"time": "04:30",
                                                                        "tasks": {"vacuum": {"enabled": False}}}})
    assert result.status_code == 200, result.text
    assert result.json["maintenance"]["time"] == "04:30"
    assert result.json["maintenance"]["timezone"] == "UTC"  # untouched keys stay
    assert result.json["maintenance"]["tasks"]["vacuum"]["enabled"] is False
    assert client.simulate_get("/api/config").json["maintenance"]["time"] == "04:30"
    changed = events.query(database, topic="server.config_changed")
    assert len(changed) == 1
    assert changed[0]["summary"]["by"] == "admin (API)"
    assert changed[0]["summary"]["changes"]["maintenance.time"] == {"old": "03:00", "new": "04:30"}
    # the same values again change nothing and dispatch nothing
    assert client.simulate_patch("/api/config", json={"maintenance": {"time": "04:30"}}).status_code == 200
    assert len(events.query(database, topic="server.config_changed")) == 1


def test_bad_key_or_value_is_400_naming_it_and_changes_nothing(client, database):
    cases = [
        ({"maintenance": {"time": "25:00"}}, "maintenance.time"),
        ({"maintenance": {"colour": "red"}}, "maintenance.colour: unknown key"),
        ({"maintenance": {"timezone": "Mars/Base"}}, "maintenance.timezone"),
        ({"instances": {"stale_after": "soon"}}, "instances.stale_after"),
        ({"maintenance": 3}, "maintenance: expected a mapping"),
        # one bad key spoils the whole patch
        ({"maintenance": {"time": "05:00", "enabled": "yes"}}, "maintenance.enabled"),
    ]
    for patch, words in cases:
        assert_error(client.simulate_patch("/api/config", json=patch), 400, words)
    for body in ("[1, 2]", "", "null", '"text"'):
        result = client.simulate_patch("/api/config", body=body, headers={"Content-Type": "application/json"})
        assert_error(result, 400, "JSON object")
    assert client.simulate_get("/api/config").json["maintenance"]["time"] == "03:00"
    assert events.query(database, topic="server.config_changed") == []


def test_config_needs_the_token(client):
    assert_error(client.simulate_get("/api/config", headers={"Authorization": ""}), 401)
    assert_error(client.simulate_patch("/api/config", json={}, headers={"Authorization": ""}), 401)


def test_unknown_query_parameter(client):
    assert_error(client.simulate_get("/api/config", params={"x": "1"}), 400, "'x'")
