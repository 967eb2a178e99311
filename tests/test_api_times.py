"""One way to write a time in the API: RFC 3339 in UTC with `Z` and six fraction digits, on every endpoint."""

import datetime
import json
import re

from server.api import stream
from server.core import events
from tests.apiclient import client  # noqa: F401  (fixture)
from tests.test_api_addons import demo, upload

RFC3339_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
LOOKS_LIKE_A_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")


def times_in(value, trail="") -> dict[str, str]:
    """Every string of a JSON document that looks like a time, by where it is."""
    found = {}
    if isinstance(value, dict):
        for key, item in value.items():
            found.update(times_in(item, f"{trail}.{key}"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.update(times_in(item, f"{trail}[{index}]"))
    elif isinstance(value, str) and LOOKS_LIKE_A_TIME.match(value):
        found[trail] = value
    return found


def test_every_endpoint_writes_times_one_way(client, database):
    database.execute("INSERT INTO instances (instance_id, program, last_seen) VALUES ('one', 'installer', now())")
    database.execute("INSERT INTO logs (ts, level, instance, program, message) "
                     "VALUES ('2026-01-10T12:00:03+01:00', 'INFO', 'one', 'server', 'hello')")
    events.dispatch(database, events.MAINTENANCE, status="finished")
    action = client.simulate_post("/api/actions", json={"topic": "action.render"}).json
    assert upload(client, demo()).status_code == 201
    client.simulate_delete("/api/addons/demo/1.0.0")

    pages = {}
    for path in ("/api/events", f"/api/events/{action['id']}", "/api/logs", "/api/instances", "/api/maintenance",
                 "/api/actions", f"/api/actions/{action['id']}", "/api/addons"):
        result = client.simulate_get(path, params={"removed": "true"} if path == "/api/addons" else None)
        assert result.status_code == 200, (path, result.text)
        pages[path] = times_in(result.json)
    pages["POST /api/actions/{id}/take"] = times_in(client.simulate_post(f"/api/actions/{action['id']}/take").json)
    message = stream.encode(action["id"], "action.render", "pending", "", datetime.datetime.now(datetime.timezone.utc))
    data = [line for line in message.sse.decode().splitlines() if line.startswith("data: ")]
    pages["/api/events/stream"] = times_in(json.loads(data[0][len("data: "):]))

    for where, found in pages.items():
        assert found, f"{where}: no time to check"
        for trail, text in found.items():
            assert RFC3339_Z.fullmatch(text), f"{where} {trail}: {text!r}"
    assert pages["/api/logs"][".logs[0].ts"] == "2026-01-10T11:00:03.000000Z"
    assert pages["/api/maintenance"][".next_run"]
    assert any(trail.endswith(".removed_at") for trail in pages["/api/addons"])
