"""GET /api/maintenance and POST /api/maintenance/run through the whole app."""

import datetime
import zoneinfo

from server.core import config, events
from tests.apiclient import assert_error, client  # noqa: F401  (fixture)


def test_overview_shows_configuration_next_run_and_last_runs(client, database):
    with database.transaction() as cur:
        config.update(cur, {"maintenance": {"time": "02:30", "timezone": "Europe/Prague",
                                            "tasks": {"vacuum": {"enabled": False}}}}, who="test")
    done = events.dispatch(database, "server.maintenance", status="finished", summary={"tasks": [], "duration_s": 1.5})
    result = client.simulate_get("/api/maintenance")
    assert result.status_code == 200, result.text
    body = result.json
    assert (body["enabled"], body["time"], body["timezone"]) == (True, "02:30", "Europe/Prague")
    due = datetime.datetime.fromisoformat(body["next_run"].replace("Z", "+00:00"))
    assert body["next_run"].endswith("Z") and due > datetime.datetime.now(datetime.timezone.utc)
    assert due.astimezone(zoneinfo.ZoneInfo("Europe/Prague")).strftime("%H:%M") == "02:30"
    assert [t["name"] for t in body["tasks"]][-1] == "vacuum" and body["tasks"][-1]["enabled"] is False
    assert body["tasks"][0]["description"] == "remove log records older than 7 days"
    assert body["running"] is None
    assert [r["id"] for r in body["last_runs"]] == [done]
    assert body["last_runs"][0]["summary"]["duration_s"] == 1.5
    assert_error(client.simulate_get("/api/maintenance", params={"last": "0"}), 400, "'last'")
    assert_error(client.simulate_get("/api/maintenance", params={"x": "1"}), 400, "'x'")


def test_run_request_is_a_pending_event(client, database):
    first = client.simulate_post("/api/maintenance/run")
    assert first.status_code == 202, first.text
    assert first.json["status"] == "pending" and first.json["created"] is True
    assert first.headers["location"] == f"/api/events/{first.json['id']}"
    request = events.get(database, first.json["id"])
    assert (request["topic"], request["status"], request["payload"]) == \
        ("server.maintenance.request", "pending", {"tasks": None})
    again = client.simulate_post("/api/maintenance/run")
    assert again.json == {**first.json, "created": False}  # a second click does not queue a second run
    only = client.simulate_post("/api/maintenance/run", json={"tasks": ["vacuum", "remove_old_logs"]})
    assert only.status_code == 202 and only.json["created"] is True
    assert events.get(database, only.json["id"])["payload"] == {"tasks": ["remove_old_logs", "vacuum"]}
    assert client.simulate_get("/api/maintenance").json["pending_requests"] == [only.json["id"], first.json["id"]]


def test_run_request_errors_name_the_problem(client, database):
    assert_error(client.simulate_post("/api/maintenance/run", json={"tasks": ["nope"]}), 400, "'nope'", "vacuum")
    assert_error(client.simulate_post("/api/maintenance/run", json={"tasks": []}), 400, "'tasks'")
    assert_error(client.simulate_post("/api/maintenance/run", json={"when": "now"}), 400, "'when'")
    assert_error(client.simulate_post("/api/maintenance/run", json=[1]), 400, "JSON object")
    assert_error(client.simulate_post("/api/maintenance/run", body="{", headers={"Content-Type": "application/json"}),
                 400)
    unauthenticated = client.simulate_post("/api/maintenance/run", headers={"Authorization": ""})
    assert unauthenticated.status_code == 401
    assert events.query(database, topic="server.maintenance.request") == []
