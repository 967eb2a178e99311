"""GET /api/openapi.json: every route of every area is described, with its errors and the token."""

import re

import falcon.inspect

from tests.apiclient import assert_error, client, make_app  # noqa: F401  (fixture)

DOCUMENTED_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def test_every_route_and_method_is_described(client, database_url):
    result = client.simulate_get("/api/openapi.json")
    assert result.status_code == 200
    doc = result.json
    assert doc["openapi"].startswith("3.")
    app = make_app(database_url)
    missing = []
    for route in falcon.inspect.inspect_routes(app):
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {path:path} is {path} in OpenAPI
        for method in route.methods:
            if method.internal or method.method not in DOCUMENTED_METHODS:
                continue
            if method.method.lower() not in doc["paths"].get(path, {}):
                missing.append(f"{method.method} {path}")
    assert missing == [], "routes missing from the OpenAPI document"


def test_common_errors_and_security(client):
    doc = client.simulate_get("/api/openapi.json").json
    events = doc["paths"]["/api/events"]["get"]
    assert events["security"] == [{"bearer": []}]
    assert {"400", "401", "500", "503"} <= set(events["responses"])
    assert "404" in doc["paths"]["/api/events/{event_id}"]["get"]["responses"]
    patch = doc["paths"]["/api/config"]["patch"]
    assert {"411", "413"} <= set(patch["responses"])
    info = doc["paths"]["/api/info"]["get"]
    assert "security" not in info and "401" not in info["responses"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    error = doc["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["status", "title"]
    # the configuration's schema comes from its declaration, maintenance tasks included
    config = doc["components"]["schemas"]["Config"]["properties"]
    assert config["maintenance"]["properties"]["time"]["type"] == "string"
    assert "vacuum" in config["maintenance"]["properties"]["tasks"]["properties"]
    params = {p["name"] for p in events["parameters"]}
    assert params == {"topic", "status", "created_since", "created_until", "updated_since", "updated_until",
                      "limit", "cursor"}


def test_needs_the_token(client):
    assert_error(client.simulate_get("/api/openapi.json", headers={"Authorization": ""}), 401)
    assert_error(client.simulate_get("/api/openapi.json", params={"v": "3"}), 400, "'v'")
