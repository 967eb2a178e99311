"""GET /api/logs."""

import datetime

from tests.apiclient import assert_error, client  # noqa: F401  (fixture)

BASE = datetime.datetime(2026, 1, 10, 12, 0, tzinfo=datetime.timezone.utc)


def insert(database, rows):
    with database.transaction() as cur:
        for ts, level, instance, program, message in rows:
            cur.execute("INSERT INTO logs (ts, level, instance, program, pid, logger, message) "
                        "VALUES (%s, %s, %s, %s, 1, 'ayon.test', %s)", (ts, level, instance, program, message))


def messages(client, **params):
    result = client.simulate_get("/api/logs", params=params)
    assert result.status_code == 200, result.text
    return [r["message"] for r in result.json["logs"]]


def test_filters(client, database):
    insert(database, [
        (BASE, "INFO", "a", "server", "started"),
        (BASE + datetime.timedelta(seconds=1), "WARNING", "a", "installer", "disk almost full"),
        (BASE + datetime.timedelta(seconds=2), "ERROR", "b", "server", "100% broken_thing"),
        (BASE + datetime.timedelta(seconds=3), "DEBUG", "b", "logcollector", "tick"),
    ])
    assert messages(client) == ["tick", "100% broken_thing", "disk almost full", "started"]
    assert messages(client, level="warning") == ["100% broken_thing", "disk almost full"]
    assert messages(client, level="ERROR") == ["100% broken_thing"]
    assert messages(client, instance="a") == ["disk almost full", "started"]
    assert messages(client, program="server") == ["100% broken_thing", "started"]
    assert messages(client, since=(BASE + datetime.timedelta(seconds=1)).isoformat(),
                    until=(BASE + datetime.timedelta(seconds=3)).isoformat()) == ["100% broken_thing",
                                                                                   "disk almost full"]
    assert messages(client, text="ALMOST") == ["disk almost full"]
    assert messages(client, text="100%") == ["100% broken_thing"]
    assert messages(client, text="%") == ["100% broken_thing"]  # '%' is literal, not a wildcard
    assert messages(client, text="k_n") == []  # so is '_' ("broken" would match it)
    record = client.simulate_get("/api/logs", params={"limit": 1}).json["logs"][0]
    assert record["ts"] == "2026-01-10T12:00:03.000000Z"
    assert record["level"] == "DEBUG" and record["pid"] == 1 and record["logger"] == "ayon.test"


def test_pages_cover_ties_exactly_once(client, database):
    # 7 records share one timestamp, so the cursor must count within it
    rows = [(BASE, "INFO", "a", "server", f"same {i}") for i in range(7)]
    rows += [(BASE - datetime.timedelta(seconds=i + 1), "INFO", "a", "server", f"older {i}") for i in range(5)]
    insert(database, rows)
    seen, cursor = [], None
    while True:
        result = client.simulate_get("/api/logs", params={"limit": 3, **({"cursor": cursor} if cursor else {})})
        assert result.status_code == 200, result.text
        seen += [r["message"] for r in result.json["logs"]]
        cursor = result.json["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(r[4] for r in rows)
    assert len(seen) == len(rows)
    assert seen[7:] == [f"older {i}" for i in range(5)]


def test_bad_parameters_are_400_naming_them(client):
    for params, name in [({"level": "loud"}, "level"), ({"since": "noon"}, "since"), ({"until": "x"}, "until"),
                         ({"limit": "-1"}, "limit"), ({"cursor": "abc"}, "cursor"), ({"text": "x" * 201}, "text"),
                         ({"grep": "x"}, "grep")]:
        assert_error(client.simulate_get("/api/logs", params=params), 400, f"'{name}'")
    assert_error(client.simulate_get("/api/logs", headers={"Authorization": ""}), 401)
