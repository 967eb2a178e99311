"""GET and PATCH /api/config."""

import pytest

from server.core import config, events
from server.core.values import Token
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


# --- secret keys are write-only ---

SECRETS = [field for field in config.fields() if field.secret]


def sample(field, tag: str) -> str:
    """A value its kind accepts, which no answer may ever contain."""
    if isinstance(field.kind, Token):
        return f"s3cret-{tag}-{field.name}"[: field.kind.max_length]
    pytest.fail(f"{field.name}: add a sample value for a secret of kind {type(field.kind).__name__}")


def nested(path: str, value) -> dict:
    doc: dict = {}
    node = doc
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return doc


def at(doc: dict, path: str):
    for part in path.split("."):
        doc = doc[part]
    return doc


def stored(database, path: str):
    return at(database.fetchone("SELECT data FROM server_config WHERE id = 1")[0], path)


def test_there_is_a_secret_key_to_guard():
    assert SECRETS, "no secret key declared: the tests below guard nothing"


@pytest.mark.parametrize("field", SECRETS, ids=[f.name for f in SECRETS])
def test_a_secret_is_written_but_never_read_back(client, database, field):
    value = sample(field, "one")
    result = client.simulate_patch("/api/config", json=nested(field.name, value))
    assert result.status_code == 200, result.text
    assert at(result.json, field.name) == config.MASK and value not in result.text
    assert stored(database, field.name) == value  # what the programs use
    read = client.simulate_get("/api/config")
    assert at(read.json, field.name) == config.MASK and value not in read.text
    assert value not in client.simulate_get("/api/openapi.json").text

    # The document as read, sent back whole (a client editing another key): the secret stays.
    document = read.json
    document["maintenance"]["time"] = "05:15"
    result = client.simulate_patch("/api/config", json=document)
    assert result.status_code == 200, result.text
    assert stored(database, field.name) == value and stored(database, "maintenance.time") == "05:15"
    [last] = events.query(database, topic=events.CONFIG_CHANGED)[:1]
    assert list(last["summary"]["changes"]) == ["maintenance.time"]

    # A new value replaces it; an empty one clears it, and then it reads empty.
    other = sample(field, "two")
    assert client.simulate_patch("/api/config", json=nested(field.name, other)).status_code == 200
    assert stored(database, field.name) == other
    if field.kind.check("") == "":
        result = client.simulate_patch("/api/config", json=nested(field.name, ""))
        assert result.status_code == 200 and at(result.json, field.name) == ""
        assert at(client.simulate_get("/api/config").json, field.name) == ""


@pytest.mark.parametrize("field", SECRETS, ids=[f.name for f in SECRETS])
def test_the_api_document_says_a_secret_is_write_only(client, field):
    schema = client.simulate_get("/api/openapi.json").json["components"]["schemas"]["Config"]
    node = schema
    for part in field.name.split("."):
        node = node["properties"][part]
    assert "Write-only" in node["description"] and config.MASK in node["description"]


def test_the_mask_leaves_a_patch_of_another_shape_to_be_refused(client):
    for patch in ({"maintenance": {"notify": config.MASK}}, {"maintenance": config.MASK}):
        assert_error(client.simulate_patch("/api/config", json=patch), 400, "expected a mapping")
