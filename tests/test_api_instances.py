"""GET /api/instances."""

from tests.apiclient import assert_error, client  # noqa: F401  (fixture)


def test_instances_with_programs_and_stale_flags(client, database):
    database.execute(
        "INSERT INTO instances (instance_id, program, pid, hostname, version, last_seen, info) VALUES "
        "('a', 'server', 10, 'host-a', '0.1.0', now(), '{}'),"
        "('a', 'installer', 11, 'host-a', '0.1.0', now() - interval '10 minutes', '{\"queue_depth\": 2}'),"
        "('b', 'server', 20, 'host-b', '0.1.0', now() - interval '1 hour', '{}')"
    )
    result = client.simulate_get("/api/instances")
    assert result.status_code == 200, result.text
    doc = result.json
    assert doc["stale_after"] == 30
    a, b = doc["instances"]
    assert a["instance_id"] == "a" and a["stale"] is False
    assert [(p["program"], p["stale"]) for p in a["programs"]] == [("installer", True), ("server", False)]
    assert a["programs"][0]["info"] == {"queue_depth": 2}
    assert a["programs"][1]["pid"] == 10 and a["programs"][1]["last_seen"].endswith("Z")
    assert b["instance_id"] == "b" and b["stale"] is True
    # the threshold comes from the configuration
    assert client.simulate_patch("/api/config", json={"instances": {"stale_after": 86400}}).status_code == 200
    doc = client.simulate_get("/api/instances").json
    assert doc["stale_after"] == 86400
    assert [i["stale"] for i in doc["instances"]] == [False, False]


def test_no_instances(client):
    assert client.simulate_get("/api/instances").json == {"stale_after": 30, "instances": []}


def test_errors(client):
    assert_error(client.simulate_get("/api/instances", params={"all": "1"}), 400, "'all'")
    assert_error(client.simulate_get("/api/instances", headers={"Authorization": ""}), 401)
