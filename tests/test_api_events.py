"""GET /api/events and /api/events/{id}, and what every /api/ route shares: token, errors, body limit."""

import datetime
import json

from server.core import events
from tests.apiclient import AUTH, assert_error, client, gunicorn  # noqa: F401  (fixtures)


def seed(database, count: int, topic: str = "test.item", status: str = "finished") -> list[str]:
    return [events.dispatch(database, topic, status=status, description=f"n{i}") for i in range(count)]


def test_newest_first_with_every_field(client, database):
    ids = seed(database, 3)
    result = client.simulate_get("/api/events")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    page = result.json
    assert [e["id"] for e in page["events"]] == ids[::-1]
    assert page["next_cursor"] is None
    first = page["events"][0]
    assert set(first) == {"id", "topic", "status", "description", "summary", "payload", "sender", "depends_on",
                          "created_at", "updated_at"}
    assert first["created_at"].endswith("Z")  # UTC whatever the database server's time zone
    assert datetime.datetime.fromisoformat(first["created_at"]).tzinfo is not None


def test_cursor_pages_cover_everything_once(client, database):
    ids = seed(database, 25)
    seen, cursor = [], None
    while True:
        result = client.simulate_get("/api/events", params={"limit": 10, **({"cursor": cursor} if cursor else {})})
        assert result.status_code == 200, result.text
        seen += [e["id"] for e in result.json["events"]]
        cursor = result.json["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert len(seen) == 25


def test_a_full_last_page_has_no_next_cursor(client, database):
    seed(database, 10)
    result = client.simulate_get("/api/events", params={"limit": 10})
    assert len(result.json["events"]) == 10
    assert result.json["next_cursor"] is None


def test_topic_exact_and_prefix_and_status(client, database):
    seed(database, 2, "server.maintenance", "in_progress")
    seed(database, 1, "server.config_changed", "finished")
    seed(database, 1, "action.render", "pending")
    seed(database, 1, "serverx.other")

    def topics(**params):
        result = client.simulate_get("/api/events", params=params)
        assert result.status_code == 200, result.text
        return sorted(e["topic"] for e in result.json["events"])

    assert topics(topic="server.*") == ["server.config_changed"] + ["server.maintenance"] * 2
    assert topics(topic="server.maintenance") == ["server.maintenance"] * 2
    assert topics(status="pending") == ["action.render"]
    assert topics(status="pending,in_progress") == ["action.render"] + ["server.maintenance"] * 2
    assert topics(topic="server_*") == []  # '_' is no wildcard


def test_time_filters(client, database):
    old = seed(database, 1)[0]
    database.execute("UPDATE events SET created_at = now() - interval '2 days' WHERE id = %s", (old,))
    new = seed(database, 1)[0]
    since = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)).isoformat()
    result = client.simulate_get("/api/events", params={"created_since": since})
    assert [e["id"] for e in result.json["events"]] == [new]
    result = client.simulate_get("/api/events", params={"created_until": since})
    assert [e["id"] for e in result.json["events"]] == [old]
    # updated_at moved with the UPDATE above: both were updated within the last day
    result = client.simulate_get("/api/events", params={"updated_since": since})
    assert len(result.json["events"]) == 2
    result = client.simulate_get("/api/events", params={"updated_until": since})
    assert result.json["events"] == []


def test_bad_parameters_are_400_naming_them(client):
    cases = [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "done"}, "status"),
        ({"topic": "a*b"}, "topic"),
        ({"created_since": "yesterday"}, "created_since"),
        ({"updated_until": "2026-13-01"}, "updated_until"),
        ({"cursor": "bm9wZQ"}, "cursor"),
        ({"cursor": "!!!"}, "cursor"),
        ({"colour": "red"}, "colour"),
    ]
    for params, name in cases:
        assert_error(client.simulate_get("/api/events", params=params), 400, f"'{name}'")


def test_one_event_and_its_errors(client, database):
    event_id = seed(database, 1)[0]
    result = client.simulate_get(f"/api/events/{event_id}")
    assert result.status_code == 200
    assert result.json["id"] == event_id
    assert result.json["description"] == "n0"
    assert_error(client.simulate_get("/api/events/00000000-0000-0000-0000-000000000000"), 404, "no event")
    assert_error(client.simulate_get("/api/events/not-a-uuid"), 400, "'id'")


def test_token_is_required_and_checked(client):
    for headers in ({"Authorization": ""}, {"Authorization": "Basic dGVzdA=="}, {"Authorization": "Bearer "}):
        body = assert_error(client.simulate_get("/api/events", headers=headers), 401)
        assert body["title"] == "Authentication required"
    result = client.simulate_get("/api/events", headers={"Authorization": "Bearer wrong"})
    assert_error(result, 401, "not valid")
    assert result.headers["www-authenticate"] == "Bearer"
    # /api/info and the health and metrics routes need no token
    for path in ("/api/info", "/health/live", "/health/ready", "/metrics"):
        assert client.simulate_get(path, headers={"Authorization": ""}).status_code == 200, path


def test_token_stored_as_hash_by_setup(database_url, database):
    import hashlib

    import falcon.testing

    from tests.apiclient import make_app

    database.execute("INSERT INTO secrets (name, value) VALUES ('admin_token_sha256', %s)",
                     (hashlib.sha256(b"generated").hexdigest(),))
    app = make_app(database_url, AYON_ADMIN_TOKEN="")
    client = falcon.testing.TestClient(app)
    assert client.simulate_get("/api/events", headers={"Authorization": "Bearer generated"}).status_code == 200
    assert_error(client.simulate_get("/api/events", headers={"Authorization": "Bearer other"}), 401)
    # A wrong token as a worker's first request: refused when the stored hash is read, too.
    fresh = falcon.testing.TestClient(make_app(database_url, AYON_ADMIN_TOKEN=""))
    assert_error(fresh.simulate_get("/api/events", headers={"Authorization": "Bearer other"}), 401)
    assert fresh.simulate_get("/api/events", headers={"Authorization": "Bearer generated"}).status_code == 200


def test_unknown_route_and_method(client):
    assert_error(client.simulate_get("/api/nothing-here"), 404, "/api/nothing-here")
    assert_error(client.simulate_get("/nowhere"), 404, "GET /nowhere")
    body = assert_error(client.simulate_delete("/api/events"), 405, "DELETE")
    assert "GET" in body["description"]


def test_body_limit_is_413_before_reading(client):
    big = json.dumps({"maintenance": {"time": "04:00"}, "pad": "x" * (1024 * 1024)})
    result = client.simulate_patch("/api/config", body=big, headers={"Content-Type": "application/json"})
    assert_error(result, 413, "at most 1048576 bytes")


def test_malformed_json_body_is_400(client):
    result = client.simulate_patch("/api/config", body="{nope", headers={"Content-Type": "application/json"})
    assert_error(result, 400, "not valid JSON")


def test_schema_not_current_is_503(empty_database_url):
    import falcon.testing

    from tests.apiclient import make_app

    client = falcon.testing.TestClient(make_app(empty_database_url), headers=AUTH)
    result = client.simulate_get("/api/events")
    assert_error(result, 503, "not ready")
    assert result.headers["retry-after"] == "5"


def test_real_server_body_limits(gunicorn):
    """Answers sent before the body was read reach clients that are still sending it."""
    import http.client

    from tests.apiclient import AUTH

    host, port = gunicorn.url.removeprefix("http://").split(":")
    headers = {**AUTH, "Content-Type": "application/json"}

    def error(conn: http.client.HTTPConnection, status: int) -> dict:
        response = conn.getresponse()
        assert response.status == status, response.read()
        body = json.loads(response.read())["error"]
        conn.close()
        return body

    # A body without Content-Length cannot be checked against the limit before reading it;
    # the client goes on streaming chunks after the answer was sent.
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("PATCH", "/api/config", headers=headers, encode_chunked=True,
                 body=iter([b'{"maintenance":', b' {"time": "04:00"}}', *[b" " * 65536] * 32]))
    assert error(conn, 411)["title"] == "Length required"

    def announced(length: int, sent: int) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.putrequest("PATCH", "/api/config")
        for name, value in {**headers, "Content-Length": str(length)}.items():
            conn.putheader(name, value)
        conn.endheaders(b"{" + b" " * (sent - 1))
        return conn

    # Announced as 2 MiB, only the first 64 KiB sent: the answer comes without reading the rest.
    assert "at most 1048576 bytes" in error(announced(2 * 1024 * 1024, 64 * 1024), 413)["description"]
    # The whole announced body sent before looking for the answer. Beyond what the kernel buffers
    # between the two ends hold (64 MiB), the client gets there only if the server drops the rest.
    for size in (2 * 1024 * 1024, 64 * 1024 * 1024):
        assert "at most 1048576 bytes" in error(announced(size, size), 413)["description"]
    # The workers go on serving.
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/api/info")
    assert conn.getresponse().status == 200
    conn.close()


def test_times_are_utc_whatever_the_database_time_zone(pg, database_url, database):
    import falcon.testing

    from tests.apiclient import make_app

    event_id = seed(database, 1)[0]
    admin = pg.admin()
    with admin.cursor() as cur:
        cur.execute(f"ALTER DATABASE {database_url.rsplit('/', 1)[1]} SET timezone = 'Asia/Tokyo'")
    admin.close()
    client = falcon.testing.TestClient(make_app(database_url), headers=AUTH)
    listed = client.simulate_get("/api/events").json["events"][0]
    single = client.simulate_get(f"/api/events/{event_id}").json
    for doc in (listed, single):
        assert doc["created_at"].endswith("Z"), doc
    stored = events.get(database, event_id)["created_at"]
    assert datetime.datetime.fromisoformat(single["created_at"]) == stored


def test_empty_values(client, database):
    seed(database, 2)
    # an empty text filter means no filter; an empty number or time is malformed
    assert len(client.simulate_get("/api/events", params={"topic": "", "status": ""}).json["events"]) == 2
    for name in ("limit", "created_since", "updated_until"):
        assert_error(client.simulate_get(f"/api/events?{name}="), 400, f"'{name}': empty value")
