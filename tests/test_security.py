"""The server attacked as an anonymous client would: every route, every method, every spelling of its path.

Routes are enumerated from the app's own router, so a route added later is
covered without editing this file; requests go to a real gunicorn over raw
HTTP, so no client library tidies a path on the way.
"""

import http.client
import json
import uuid

import pytest

from server.api.common import is_public
from server.api.openapi import build, routes
from tests.apiclient import assert_error, client, gunicorn, make_app  # noqa: F401  (fixtures)

# The resources that answer without the token, and why (README, "Security").
PUBLIC_ROUTES = {
    "/": "the dashboard page, which asks for the token itself",
    "/static/{name}": "the dashboard's scripts and styles",
    "/favicon.ico": "the dashboard's icon",
    "/health/live": "liveness probe",
    "/health/ready": "readiness probe",
    "/api/info": "version, instance and roles",
    "/metrics": "Prometheus scrape: counts with a fixed set of labels",
    "/addons/{name}/{version}/{path:path}": "addon files for browsers, served sandboxed",
}

SAMPLE_PARAMS = {"event_id": str(uuid.uuid4()), "action_id": str(uuid.uuid4()), "name": "demo",
                 "version": "1.0.0", "path:path": "index.html"}


def concrete(template: str) -> str:
    path = template
    for name, value in SAMPLE_PARAMS.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"no sample value for a parameter of {template}; add one to SAMPLE_PARAMS"
    return path


def spellings(path: str) -> list[str]:
    """The same path as an attacker spells it: each must be refused or routed to the same resource."""
    segments = path.strip("/").split("/")
    first, rest = segments[0], "/".join(segments[1:])
    tail = "/" + rest if rest else ""
    encoded_letter = "/" + "/".join("%{:02X}".format(ord(s[0])) + s[1:] for s in segments)
    found = [
        path,
        path + "/",
        "/" + path,
        path.replace("/", "//"),
        "/%2F" + path.lstrip("/"),
        "/%2f" + path.lstrip("/"),
        f"/{first}%2F{rest}" if rest else path + "%2F",
        "/./" + path.lstrip("/"),
        "/x/.." + path,
        f"/{first}/%2e{tail}",
        f"/{first}/.{tail}",
        path.upper(),
        path + ";x=1",
        f"/{first};x=1{tail}",
        encoded_letter,
        path.replace("/", "\\"),
        "/" + path.lstrip("/").replace("/", "\\"),
        path + "?",
        path + "#x",
        path + "%20",
        path + "/.",
    ]
    return list(dict.fromkeys(s for s in found if s))


@pytest.fixture(scope="module")
def app(pg):
    url = pg.new_database()
    try:
        yield make_app(url)
    finally:
        pg.drop_database(url)


@pytest.fixture(scope="module")
def app_routes(app):
    return routes(app)


class Raw:
    """Requests on one keep-alive connection, the path sent byte for byte."""

    def __init__(self, base: str):
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.conn = None

    def send(self, method: str, path: str, headers: dict, body: bytes | None = None):
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                self.conn.putrequest(method, path, skip_accept_encoding=True)
                for name, value in headers.items():
                    self.conn.putheader(name, value)
                if body is not None:
                    self.conn.putheader("Content-Length", str(len(body)))
                self.conn.endheaders(body)
                response = self.conn.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
                return response.status, data, {k.lower(): v for k, v in response.getheaders()}
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()
                if attempt == 2:
                    raise

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


ANONYMOUS = {
    "no header": {},
    "empty bearer": {"Authorization": "Bearer "},
    "wrong token": {"Authorization": "Bearer wrong-token-of-some-length"},
}


def assert_refusal(status: int, data: bytes, where: str) -> None:
    """Our JSON error, or gunicorn's own 400 for a request line it cannot parse: never data."""
    if status == 400 and not data.startswith(b"{"):
        assert data.startswith(b"Invalid request") or b"Bad Request" in data, f"{where}: {data[:200]!r}"
        return
    assert json.loads(data)["error"]["status"] == status, f"{where}: {data[:200]!r}"


def test_public_routes_are_exactly_the_documented_ones(app_routes):
    public = {template for template, resource, _ in app_routes if is_public(resource)}
    assert public == set(PUBLIC_ROUTES), "a resource became public (or stopped being): update README 'Security'"


def test_openapi_says_which_routes_need_the_token(app, app_routes):
    document = build(app)
    for template, resource, methods in app_routes:
        path = template.replace("{path:path}", "{path}")
        operations = document["paths"].get(path)
        assert operations, f"{template} is missing from the OpenAPI document"
        for method in methods:
            operation = operations.get(method.lower())
            if operation is None:
                continue  # HEAD is answered wherever GET is, and not described twice
            secured = bool(operation.get("security"))
            assert secured == (not is_public(resource)), f"{method} {template}: security does not match the resource"


def test_no_spelling_of_a_protected_path_answers_without_the_token(gunicorn, app_routes):
    raw = Raw(gunicorn.url)
    token = gunicorn.env["AYON_ADMIN_TOKEN"]
    checked = 0
    try:
        for template, resource, methods in app_routes:
            if is_public(resource):
                continue
            path = concrete(template)
            for method in (*methods, "OPTIONS"):
                body = b"{}" if method in ("POST", "PATCH", "PUT") else None
                headers = {"Content-Type": "application/json"} if body is not None else {}
                # The canonical spelling is refused by the token check itself.
                for who, auth in {**ANONYMOUS, "other scheme": {"Authorization": f"Token {token}"},
                                  "basic": {"Authorization": "Basic YXlvbjp0ZXN0"}}.items():
                    status, data, _ = raw.send(method, path, {**headers, **auth}, body)
                    assert status == 401, f"{method} {path} ({who}) answered {status}: {data[:200]!r}"
                    checked += 1
                for spelling in spellings(path)[1:]:
                    for who, auth in ANONYMOUS.items():
                        status, data, _ = raw.send(method, spelling, {**headers, **auth}, body)
                        where = f"{method} {spelling} ({who})"
                        assert status in (400, 401, 404, 405), f"{where} answered {status}: {data[:200]!r}"
                        if method != "HEAD":
                            assert_refusal(status, data, where)
                        checked += 1
    finally:
        raw.close()
    assert checked > 1000, f"only {checked} requests were checked"


def test_the_token_opens_every_protected_route(gunicorn, app_routes):
    """The control: with the token, the canonical spelling reaches the resource (no 401), so the test above
    fails when a resource stops checking, not because every spelling misses the route."""
    raw = Raw(gunicorn.url)
    auth = {"Authorization": "Bearer " + gunicorn.env["AYON_ADMIN_TOKEN"]}
    try:
        for template, resource, methods in app_routes:
            if is_public(resource) or "GET" not in methods:
                continue
            method = "HEAD" if template.endswith("/stream") else "GET"  # a stream would not end
            status, data, _ = raw.send(method, concrete(template), auth)
            assert status in (200, 404), f"{method} {template} with the token answered {status}: {data[:200]!r}"
            for spelling in (concrete(template) + "/", "/api/%63onfig" if template == "/api/config" else None):
                if spelling:
                    assert raw.send(method, spelling, auth)[0] in (200, 404)
    finally:
        raw.close()


def test_doubled_and_encoded_slashes_never_reach_the_configuration(gunicorn):
    raw = Raw(gunicorn.url)
    try:
        for path in ("//api/config", "/%2Fapi/config", "/api//config", "/api/%2e/config", "/api%2Fconfig"):
            for method in ("GET", "HEAD", "PATCH", "POST", "DELETE", "OPTIONS"):
                body = b'{"maintenance": {"time": "04:00"}}' if method == "PATCH" else None
                headers = {"Content-Type": "application/json"} if body else {}
                status, data, _ = raw.send(method, path, headers, body)
                assert status in (401, 404, 405), f"{method} {path} answered {status}"
                assert b"maintenance" not in data
    finally:
        raw.close()


def test_a_folded_path_is_named_as_the_reason_whether_or_not_a_route_matches(gunicorn):
    """Routed or not, a doubled slash, a dot segment or an encoded slash is a 404 that says so."""
    raw = Raw(gunicorn.url)
    try:
        for path in ("//api/config", "/api//config", "/api/./config", "/api/%2e/config", "/api%2Fconfig",
                     "/no/./such", "//no", "/api/../api/info"):
            status, data, _ = raw.send("GET", path, {})
            assert status == 404, f"{path} answered {status}"
            assert "not in canonical form" in json.loads(data)["error"]["description"], (path, data)
        status, data, _ = raw.send("GET", "/no/such", {})
        assert status == 404 and json.loads(data)["error"]["description"] == "no route for GET /no/such"
        # So is a NUL character in the query, as on every route.
        status, data, _ = raw.send("GET", "/no/such?x=%00", {})
        assert status == 400 and "NUL" in json.loads(data)["error"]["description"], data
    finally:
        raw.close()


def test_public_routes_answer_head_like_get(gunicorn, app_routes):
    raw = Raw(gunicorn.url)
    try:
        for template, resource, _methods in app_routes:
            if not is_public(resource) or "{" in template:
                continue
            get = raw.send("GET", template, {})
            head = raw.send("HEAD", template, {})
            assert head[0] == get[0], f"HEAD {template}: {head[0]} but GET {get[0]}"
            assert head[1] == b""
            assert head[2].get("content-type") == get[2].get("content-type")
        status, data, headers = raw.send("GET", "/favicon.ico", {})
        assert status == 200 and headers["content-type"] == "image/x-icon" and data[:4] == b"\x00\x00\x01\x00"
    finally:
        raw.close()


# --- hostile bodies, on every JSON write route ---

DEEP = 5000
HOSTILE_BODIES = {
    "nested arrays": b"[" * DEEP + b"]" * DEEP,
    "nested objects": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "nested past the limit": b'{"a":' * 40 + b"1" + b"}" * 40,
    "lone surrogate": b'{"x": "\\ud800"}',
    "lone surrogate key": b'{"\\udfff": 1}',
    "invalid utf-8": b'{"x": "\xff\xfe"}',
    "NUL in text": b'{"x": "a\\u0000b"}',
    "NUL in key": b'{"a\\u0000": 1}',
    "raw NUL byte": b'{"x": 1}\x00',
    "huge exponent": b'{"x": 1e999}',
    "negative huge exponent": b'{"x": -1e400}',
    "5000 digits": b'{"x": ' + b"9" * 5000 + b"}",
    "NaN": b'{"x": NaN}',
    "Infinity": b'{"x": Infinity}',
    "bare NaN": b"NaN",
    "truncated": b'{"x": ',
    "not json": b"<xml/>",
    "bare string": b'"text"',
    "bare number": b"12",
    "array": b"[1, 2]",
    "null": b"null",
    "true": b"true",
    "byte order mark": b'\xef\xbb\xbf{"x": 1}',
    "utf-16": '{"x": 1}'.encode("utf-16"),
}

# Values put in place of each key a route documents, to reach its own validation.
HOSTILE_VALUES = [None, True, -1, 0, 2 ** 63, 10 ** 30, -(10 ** 30), 1.5, 1e308, "", " ", "x" * 100_000, "\u202e",
                  "../../etc/passwd", "' OR 1=1 --", [], [1, "a", None], {}, {"a": {"b": {"c": [1]}}}]


def json_write_routes(app_routes):
    for template, resource, methods in app_routes:
        if "application/json" not in getattr(resource, "accepts", ("application/json",)):
            continue
        for method in methods:
            if method in ("POST", "PATCH", "PUT"):
                yield template, method


def documented_keys(document: dict, template: str, method: str) -> list[str]:
    operation = document["paths"][template.replace("{path:path}", "{path}")][method.lower()]
    schema = (operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}))
    return list(schema.get("properties", {}))


def test_hostile_bodies_are_a_4xx_json_error_on_every_json_route(client, app_routes):
    targets = list(json_write_routes(app_routes))
    assert len(targets) >= 5, targets
    for template, method in targets:
        path = concrete(template)
        for name, body in HOSTILE_BODIES.items():
            result = client.simulate_request(method, path, body=body, headers={"Content-Type": "application/json"})
            where = f"{method} {template} with {name}"
            assert 400 <= result.status_code < 500, f"{where}: {result.status_code} {result.text[:200]}"
            assert result.json["error"]["status"] == result.status_code, where


def test_hostile_values_never_make_a_500(client, app, app_routes):
    document = build(app)
    for template, method in json_write_routes(app_routes):
        path = concrete(template)
        for key in documented_keys(document, template, method) or ["x"]:
            for value in HOSTILE_VALUES:
                for body in ({key: value}, {key: {"nested": value}}, {key: [value]}):
                    result = client.simulate_request(method, path, json=body)
                    where = f"{method} {template} with {json.dumps(body)[:80]}"
                    assert result.status_code < 500, f"{where}: {result.status_code} {result.text[:200]}"
                    if result.status_code >= 400:
                        assert result.json["error"]["status"] == result.status_code, where


def test_configuration_patches_with_hostile_values_are_refused_cleanly(client):
    current = client.simulate_get("/api/config").json
    leaves = []

    def walk(value, trail):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, trail + [key])
        else:
            leaves.append(trail)

    walk(current, [])
    assert len(leaves) > 5
    for trail in leaves:
        for value in HOSTILE_VALUES + ["\ud800", "a\x00b", float("nan")]:
            patch = value
            for key in reversed(trail):
                patch = {key: patch}
            body = json.dumps(patch).encode()
            result = client.simulate_patch("/api/config", body=body, headers={"Content-Type": "application/json"})
            where = f"PATCH {'.'.join(trail)} = {str(value)[:40]!r}"
            assert result.status_code in (200, 400), f"{where}: {result.status_code} {result.text[:200]}"
    # Whatever was accepted, the stored document still reads back and passes its own validation.
    assert client.simulate_get("/api/config").status_code == 200


HOSTILE_QUERY = ["", "%00", "%ff%fe", "%ED%A0%80", "-1", "0", "99999999999999999999999", "1e9", "NaN", "[]",
                 "%27%20OR%201%3D1%20--", "x" * 5000, "AAAA", "eyJ4IjoxfQ", "////", "..%2F..%2F"]


def test_hostile_query_values_never_make_a_500(client, app, app_routes):
    document = build(app)
    for template, _resource, methods in app_routes:
        if "GET" not in methods or template.endswith("/stream"):
            continue
        operation = document["paths"][template.replace("{path:path}", "{path}")]["get"]
        names = [p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"]
        for name in names:
            for value in HOSTILE_QUERY:
                result = client.simulate_get(concrete(template), query_string=f"{name}={value}")
                where = f"GET {template}?{name}={value[:40]}"
                assert result.status_code < 500, f"{where}: {result.status_code} {result.text[:200]}"


# --- content types ---

FOREIGN_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "text/html", "application/xml"]


def test_json_writes_in_any_other_content_type_are_415(client, app_routes):
    targets = list(json_write_routes(app_routes))
    for template, method in targets:
        for content_type in FOREIGN_TYPES:
            result = client.simulate_request(method, concrete(template), body=b'{"x": 1}',
                                             headers={"Content-Type": content_type})
            assert_error(result, 415, "application/json")
        # A body without any type is refused too.
        result = client.simulate_request(method, concrete(template), body=b'{"x": 1}')
        assert result.status_code == 415, f"{method} {template} untyped body: {result.status_code}"


def test_uploads_take_only_zip_types(client):
    for content_type in FOREIGN_TYPES + ["application/json"]:
        result = client.simulate_post("/api/addons", body=b"PK\x03\x04", headers={"Content-Type": content_type})
        assert_error(result, 415, "application/zip")


def test_no_cors_answers(client):
    result = client.simulate_options("/api/config", headers={"Origin": "https://evil.example",
                                                              "Access-Control-Request-Method": "PATCH"})
    assert not any(name.lower().startswith("access-control-") for name in result.headers)
    result = client.simulate_get("/api/info", headers={"Origin": "https://evil.example"})
    assert not any(name.lower().startswith("access-control-") for name in result.headers)


def test_addon_files_are_sandboxed(database_url, tmp_path):
    import falcon.testing

    from server.core import layout

    folder = layout.package_dir(tmp_path, "addon", "demo", "1.0.0")
    folder.mkdir(parents=True)
    (folder / "index.html").write_text("<script>document.title = localStorage.length</script>")
    anonymous = falcon.testing.TestClient(make_app(database_url, AYON_DATA_DIR=str(tmp_path)))
    for method in ("GET", "HEAD"):
        result = anonymous.simulate_request(method, "/addons/demo/1.0.0/index.html")
        assert result.status_code == 200, result.text
        policy = result.headers["Content-Security-Policy"]
        assert policy.startswith("sandbox") and "allow-same-origin" not in policy
        assert result.headers["X-Content-Type-Options"] == "nosniff"
        assert result.headers["Content-Type"].startswith("text/html")


def test_dashboard_headers_forbid_framing_and_inline_script(client):
    result = client.simulate_get("/")
    policy = result.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "'unsafe-inline'" not in policy
    assert "script-src 'self'" in policy
    assert result.headers["X-Frame-Options"] == "DENY"
    assert "<script>" not in result.text and " on" not in result.text.split("<body", 1)[1].split(">")[0]
