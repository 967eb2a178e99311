"""Every parser of untrusted text, fed arbitrary text and structures: its documented answer, never a 500.

What is parsed comes from server/api/untrusted.py: every input each responder declares (read from the
app's router), the headers the gate reads, and PARSERS. A parser listed there without a property here
fails `test_every_listed_parser_has_a_property`; a parser written in the code without being listed fails
the scans at the end.
"""

import ast
import base64
import contextlib
import dataclasses
import datetime
import io
import json
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path
from urllib.parse import quote

import falcon.testing
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from server.api import spec, stream, untrusted
from server.core import archive, config, layout, values
from server.core.db import Database
from server.core.errors import run_main
from server.core.settings import SETTINGS
from tests.apiclient import AUTH, make_app
from tests.conftest import ROOT

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HTTP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- what hostile text looks like ---

ANY_CHAR = st.characters(codec=None, exclude_categories=())  # every code point: controls, NUL, lone surrogates
TEXT = st.text(ANY_CHAR, max_size=80)
DIGITS = st.integers(1, 6000).map(lambda n: "9" * n)  # past Python's 4300-digit int() limit
BYTES = st.binary(max_size=200).map(lambda raw: raw.decode("latin-1"))  # any byte, as a header or a bad encoding
ISOISH = st.builds("{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}{}".format,
                   st.integers(0, 10000), st.integers(0, 13), st.integers(0, 32), st.integers(0, 25),
                   st.integers(0, 61), st.integers(0, 61),
                   st.sampled_from(["", "Z", "+00:00", "-23:59", "+15:59", "+16:00", "+23:59:59.999999"]))
PART = st.one_of(TEXT, DIGITS, ISOISH, st.uuids().map(str), st.sampled_from(["²", "١٢", "-1", " 1", "0x10"]))


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode().rstrip("=")


# What a cursor is made of (base64url of parts joined by '|'), with parts of every kind: it gets past the decoding.
CURSORS = st.lists(PART, min_size=1, max_size=3).map(lambda parts: _b64("|".join(parts)))
HOSTILE = st.one_of(TEXT, DIGITS, BYTES, ISOISH, CURSORS)
HEADER_TEXT = st.one_of(BYTES, CURSORS, ISOISH, DIGITS).map(lambda t: t.replace("\r", "").replace("\n", ""))

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(10 ** 30), 10 ** 30),
                      st.floats(allow_nan=False, allow_infinity=False), TEXT.filter(_plain := (
                          lambda t: "\x00" not in t and not any(0xD800 <= ord(c) <= 0xDFFF for c in t))))
JSON = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(TEXT.filter(_plain), inner, max_size=4), max_leaves=12)


def encoded(text: str, safe: str = "") -> str:
    """Text as a client puts it in a URL: every byte of its UTF-8 (lone surrogates included) percent-encoded."""
    return quote(text, safe=safe, errors="surrogatepass")


# --- the app, on one database for the module ---

@pytest.fixture(scope="module")
def served(pg, tmp_path_factory):
    """A client of the whole app with one installed addon, its database and its data folder."""
    url = pg.new_database()
    data = tmp_path_factory.mktemp("data")
    folder = layout.package_dir(data, "addon", "demo", "1.0.0")
    (folder / "sub").mkdir(parents=True)
    (folder / "index.html").write_text("<p>demo</p>")
    (folder / "sub" / "a.js").write_text("1")
    app = make_app(url, AYON_DATA_DIR=str(data))
    database = Database(url, size=2, application_name="ayon-test")
    try:
        yield falcon.testing.TestClient(app, headers=AUTH), app, database
    finally:
        database.close()
        pg.drop_database(url)


SAMPLE = {"event_id": str(uuid.uuid4()), "action_id": str(uuid.uuid4()), "name": "demo", "version": "1.0.0",
          "path:path": "index.html"}


def path_of(template: str, param: str | None = None, value: str = "") -> str:
    path = template
    for name, sample in SAMPLE.items():
        given_value = encoded(value, safe="/" if name == "path:path" else "") if name.split(":")[0] == param \
            else sample
        path = path.replace("{" + name + "}", given_value)
    assert "{" not in path, f"no sample value for a parameter of {template}; add one to SAMPLE"
    return path


def call(client, item: untrusted.Input, value: str):
    # A stream would never end: HEAD checks its inputs the same way and answers at once.
    method = "HEAD" if item.route.endswith("/stream") else item.method
    kwargs = {}
    if item.where == "query":
        kwargs["query_string"] = f"{encoded(item.param.name)}={encoded(value)}"
        path = path_of(item.route)
    elif item.where == "path":
        path = path_of(item.route, item.param.name, value)
    else:
        kwargs["headers"] = {item.param.name: value}
        path = path_of(item.route)
    return client.simulate_request(method, path, **kwargs), method


def assert_documented(result, method: str, item: untrusted.Input, documented) -> None:
    where = f"{item} = ...: {result.status_code} {result.text[:200]}"
    assert result.status_code < 500, where
    assert result.status_code in documented, where
    if result.status_code >= 400 and method != "HEAD":
        error = result.json["error"]
        assert error["status"] == result.status_code, where
        if result.status_code == 400 and error["title"] == item.param.title:
            assert f"'{item.param.label}'" in error["description"], where


def declared(where: str):
    # Enumerated from an app without a database: the routes and their declarations are all it needs.
    app = make_app("postgresql://nobody@127.0.0.1:1/none")
    return [pytest.param(item, id=str(item)) for item in untrusted.declared_inputs(app) if item.where == where]


def documented_statuses(app, item: untrusted.Input) -> set[int]:
    # What the operation declares, its refusals, and the shared answers: 200, a bad value, nothing at this path.
    responder = next(r for t, m, r in untrusted.responders(app) if (t, m) == (item.route, item.method))
    return {200, 400, 404, *item.refused, *responder.spec.responses}


@pytest.mark.parametrize("item", declared("query"))
def test_every_declared_query_parameter_answers_as_documented(served, item):
    client, app, _ = served
    documented = documented_statuses(app, item)

    @HTTP
    @given(HOSTILE)
    @example("9" * 5000)
    @example(_b64("2020-01-01T00:00:00Z|" + "9" * 5000))
    @example(_b64("2020-01-01T00:00:00Z|²"))
    @example(_b64("2020-01-01T00:00:00|" + str(uuid.uuid4())))
    @example("0001-01-01T00:00:00+15:00")
    @example("2020-01-01T00:00:00+23:59")
    def check(value):
        result, method = call(client, item, value)
        assert_documented(result, method, item, documented)

    check()


@pytest.mark.parametrize("item", declared("path"))
def test_every_declared_path_parameter_answers_as_documented(served, item):
    client, app, _ = served
    documented = documented_statuses(app, item) | {405}  # a spelling that routes elsewhere

    @HTTP
    @given(HOSTILE)
    @example("a\x00b")
    @example("x" * 5000)
    @example("\ud800")
    def check(value):
        result, method = call(client, item, value)
        assert_documented(result, method, item, documented)

    check()


@pytest.mark.parametrize("item", declared("header"))
def test_every_declared_header_answers_as_documented(served, item):
    client, app, _ = served
    documented = documented_statuses(app, item)

    @HTTP
    @given(HEADER_TEXT)
    @example(_b64("2020-01-01T00:00:00|" + str(uuid.uuid4())))
    @example(_b64("0001-01-01T00:00:00+15:00|" + str(uuid.uuid4())))
    def check(value):
        result, method = call(client, item, value)
        assert_documented(result, method, item, documented)

    check()


GATE_TARGETS = {"Authorization": ("GET", "/api/config", None), "Content-Type": ("PATCH", "/api/config", b"{}"),
                "Content-Length": ("PATCH", "/api/config", b"{}"), "Transfer-Encoding": ("PATCH", "/api/config", b"{}")}


@pytest.mark.parametrize("name", sorted(untrusted.GATE_HEADERS))
def test_every_header_the_gate_reads_answers_as_documented(served, name):
    client, _, _ = served
    refused, _ = untrusted.GATE_HEADERS[name]
    method, path, body = GATE_TARGETS[name]

    @HTTP
    @given(HEADER_TEXT)
    @example("9" * 5000)
    @example("-1")
    def check(value):
        headers = {**AUTH, "Content-Type": "application/json", name: value}
        result = client.simulate_request(method, path, body=body, headers=headers)
        where = f"{name}: {value[:40]!r}: {result.status_code} {result.text[:200]}"
        assert result.status_code in (200, 400, *refused), where
        if result.status_code >= 400:
            assert result.json["error"]["status"] == result.status_code, where

    check()


# --- the listed parsers, one property each ---

def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def _writable_name(name: str) -> bool:
    # What zipfile itself can write: it cuts a name at NUL and encodes it as UTF-8.
    return "\x00" not in name and not any(0xD800 <= ord(c) <= 0xDFFF for c in name)


ENTRY_NAMES = st.one_of(TEXT, st.lists(st.sampled_from(["a", "..", ".", "", "é" * 130, "x" * 256, "C:", "\\"]),
                                       min_size=1, max_size=5).map("/".join))


def refuses_only(parser: untrusted.Parser, *args, also: tuple = ()):
    try:
        return parser.function(*args)
    except (parser.refuses_with, *also):
        return None


PARSER = {p.name: p for p in untrusted.PARSERS}


@FAST
@given(st.one_of(st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode()),
                 st.integers(1, 6000).map(lambda n: b"[" * n + b"]" * n)))
def test_json_body(raw):
    refuses_only(PARSER["JSON body"], raw)


@FAST
@given(HOSTILE)
@example(_b64("x|²"))
def test_cursor(raw):
    parts = refuses_only(PARSER["cursor"], raw)
    assert parts is None or len(parts) >= 2


@FAST
@given(st.one_of(ISOISH, TEXT, DIGITS))
@example("0001-01-01T00:00:00+15:00")
@example("9999-12-31T23:59:59-15:59")
@example("2020-01-01T00:00:00")
def test_cursor_time(raw):
    found = refuses_only(PARSER["cursor time"], raw)
    assert found is None or found.utcoffset() == datetime.timedelta(0)


@FAST
@given(PART)
def test_cursor_id(raw):
    found = refuses_only(PARSER["cursor id"], raw)
    assert found is None or str(uuid.UUID(found)) == found


@FAST
@given(PART)
@example("9" * 5000)
@example("²")
def test_cursor_count(raw):
    found = refuses_only(PARSER["cursor count"], raw)
    assert found is None or 0 <= found < 2 ** 63


def test_last_event_id(served):
    """A refused one is a 400 before any stream; an accepted one never fails the stream that starts on it."""
    _, _, database = served
    now = (datetime.datetime.now(datetime.timezone.utc), str(uuid.uuid4()))

    @HTTP
    @given(st.one_of(HEADER_TEXT, st.tuples(ISOISH, st.uuids()).map(lambda p: _b64(f"{p[0]}|{p[1]}"))))
    @example(_b64(f"2020-01-01T00:00:00|{uuid.UUID(int=1)}"))
    @example(_b64(f"9999-12-31T23:59:59.999999-15:59|{uuid.UUID(int=1)}"))
    def check(raw):
        cursor = refuses_only(PARSER["Last-Event-ID"], raw)
        if cursor is not None:
            max(cursor, now)  # the stream's own comparison with the events it sends
            stream.replay(database, cursor, [])  # and its replay from there

    check()


def test_addon_file_path(served):
    client, _, _ = served

    @HTTP
    @given(st.one_of(HOSTILE, st.lists(st.sampled_from(["sub", "a.js", "..", ".", "index.html", "x" * 300, "\x00",
                                                        "\ud800", "%2f", "é" * 200]), max_size=6).map("/".join)))
    @example("sub/a.js")
    @example("a\x00b")
    @example("x" * 5000)
    @example("\ud800")
    @example("../../../../etc/passwd")
    def check(path):
        for method in ("GET", "HEAD"):
            result = client.simulate_request(method, "/addons/demo/1.0.0/" + encoded(path, safe="/"))
            assert result.status_code in (200, 404), f"{path[:60]!r}: {result.status_code} {result.text[:200]}"
            if result.status_code == 404 and method == "GET":
                assert result.json["error"]["title"] == "Not found"

    check()


@FAST
@given(ENTRY_NAMES)
@example("a/" + "x" * 256)
@example("\udcff")
def test_zip_entry_name(name):
    """A name it accepts can be written: extracting an archive with that entry gives no OSError."""
    safe = refuses_only(PARSER["zip entry name"], name, archive.DEFAULT_LIMITS)
    if safe is None or not _writable_name(name):
        return
    dest = Path(tempfile.mkdtemp())
    try:
        with contextlib.suppress(archive.UnsafeArchive):  # refused for another reason (a conflict), never OSError
            archive.extract(_zip({name: b"x"}), dest)
    finally:
        shutil.rmtree(dest)


VALID_ZIP = _zip({"package.yaml": b"name: demo\nversion: '1.0.0'\n", "index.html": b"<p>x</p>"})


@FAST
@given(st.one_of(st.binary(max_size=300),
                 st.lists(st.tuples(st.integers(0, len(VALID_ZIP) - 1), st.integers(0, 255)), min_size=1,
                          max_size=8).map(lambda flips: _flipped(VALID_ZIP, flips))))
def test_zip_archive(data):
    with contextlib.suppress(archive.UnsafeArchive):
        with PARSER["zip archive"].function(data) as zf:
            archive.inspect(zf)


def _flipped(data: bytes, flips) -> bytes:
    found = bytearray(data)
    for at, byte in flips:
        found[at] = byte
    return bytes(found)


@FAST
@given(st.dictionaries(ENTRY_NAMES.filter(_writable_name), st.binary(max_size=40), max_size=4),
       st.binary(max_size=100))
def test_package(entries, manifest):
    refuses_only(PARSER["package"], _zip({**entries, "package.yaml": manifest}), also=(archive.UnsafeArchive,))


YAML_VALUES = st.one_of(DIGITS, ISOISH, st.sampled_from(["2020-02-30", "2020-13-01 10:00:00", "1e99999", "&a [*a]",
                                                        "[" * 5000 + "]" * 5000, "!!python/object:os.system",
                                                        ".nan", "0x" + "f" * 5000, "'1.0.0'"]), TEXT)


def _laughs(levels: int) -> str:
    """The billion laughs: each level names the one before ten times (refused at the first alias)."""
    lines = ['a0: "lol"'] + [f"a{i}: [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "\n".join(f"{line.split(':')[0]}: &{line.split(':')[0]}{line.split(':', 1)[1]}" for line in lines)


@FAST
@given(st.one_of(st.binary(max_size=200),
                 st.tuples(YAML_VALUES, YAML_VALUES).map(
                     lambda kv: f"name: {kv[0]}\nversion: {kv[1]}\n".encode("utf-8", "surrogatepass"))))
@example(b"name: demo\nversion: " + b"9" * 5000 + b"\n")
@example(b"name: demo\nversion: 2020-02-30\n")
@example(b"name: " + b"[" * 5000 + b"]" * 5000 + b"\nversion: '1'\n")
@example(_laughs(9).encode() + b"\nname: demo\nversion: '1'\n")
def test_manifest(text):
    refuses_only(PARSER["manifest"], text)


@FAST
@given(st.one_of(TEXT, st.lists(YAML_VALUES, max_size=4).map("\n- ".join),
                 st.integers(1, 200).map(lambda n: "a: " * n + "1"), st.integers(1, 12).map(_laughs)))
@example("[" * 5000 + "]" * 5000)
@example("a: 2020-02-30")
def test_yaml_document(text):
    refuses_only(PARSER["YAML document"], text)


CONFIG_KEYS = [field.name for field in config.fields()]


def _document(path: str, value):
    for key in reversed(path.split(".")):
        value = {key: value}
    return value


def test_configuration_document(served):
    """PATCH /api/config, webhook settings included: 200 or a 400 naming the key, never anything else."""
    client, _, _ = served

    @HTTP
    @given(st.one_of(st.sampled_from(CONFIG_KEYS), TEXT.filter(_plain)), st.one_of(JSON, DIGITS, ISOISH))
    @example("maintenance.notify.url", "http://" + "9" * 5000)
    @example("maintenance.notify.header", "X\u0100")
    @example("maintenance.notify.timeout_seconds", 10 ** 30)
    def check(key, value):
        patch = _document(key, value)
        refuses_only(PARSER["configuration document"], patch)
        result = client.simulate_patch("/api/config", json=patch)
        assert result.status_code in (200, 400), f"{key}={str(value)[:40]}: {result.status_code} {result.text}"
        if result.status_code == 400:
            assert result.json["error"]["title"] == "Invalid configuration"

    check()


def test_configuration_file(tmp_path):
    """AYON_CONFIG_FILE: what it refuses is one 'Error:' line and exit 2 (run_main), never a traceback."""
    path = tmp_path / "config.yaml"

    @FAST
    @given(st.one_of(st.binary(max_size=200),
                     st.tuples(st.sampled_from(CONFIG_KEYS), YAML_VALUES).map(
                         lambda kv: f"{kv[0].replace('.', ': {', 1)}: {kv[1]}{'}' if '.' in kv[0] else ''}\n"
                         .encode("utf-8", "surrogatepass"))))
    @example(b"maintenance:\n  max_minutes: " + b"9" * 5000 + b"\n")
    @example(b"maintenance:\n  time: 2020-02-30\n")
    def check(raw):
        path.write_bytes(raw)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as stopped:
            run_main(lambda: PARSER["configuration file"].function(str(path)) and None)
        lines = stderr.getvalue().splitlines()
        assert stopped.value.code in (0, 2), f"{raw[:60]!r}: exit {stopped.value.code}: {lines[-3:]}"
        if stopped.value.code == 2:
            assert len(lines) == 1 and lines[0].startswith("Error: AYON_CONFIG_FILE "), lines

    check()


# --- the value kinds behind every declared input, setting and configuration key ---

def declared_kinds() -> list[values.Kind]:
    app = make_app("postgresql://nobody@127.0.0.1:1/none")
    found = [item.param.kind for item in untrusted.declared_inputs(app)]
    found += [field.kind for field in config.fields()] + [setting.kind for setting in SETTINGS]
    unique = {}
    for kind in found:
        if isinstance(kind, values.Kind):
            # A kind without parameters is one kind however many times it is declared.
            unique.setdefault(repr(kind) if dataclasses.is_dataclass(kind) else type(kind).__name__, kind)
    return list(unique.values())


@pytest.mark.parametrize("kind", declared_kinds(), ids=lambda k: repr(k)[:60] if dataclasses.is_dataclass(k)
                         else type(k).__name__)
def test_every_declared_kind_refuses_with_a_value_error(kind):
    @FAST
    @given(st.one_of(HOSTILE, JSON))
    def check(value):
        for read in (kind.from_text, kind) if isinstance(value, str) else (kind,):
            with contextlib.suppress(ValueError):
                read(value)

    check()


# --- the enumeration is complete ---

def test_every_listed_parser_has_a_property():
    tested = {name.removeprefix("test_").replace("_", " ") for name in globals() if name.startswith("test_")}
    for parser in untrusted.PARSERS:
        assert parser.name.lower().replace("-", " ") in tested, f"{parser.name}: no property test for it here"


def _functions_and_calls():
    for path in sorted((ROOT / "server").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            yield path.relative_to(ROOT), node


# Functions that parse nothing a client or an archive sends, and why.
NOT_UNTRUSTED = {"cursor_sql": "builds a cursor, in SQL", "load_assets": "reads the dashboard's own files",
                 "read_batch": "the log collector reads the spool its own programs wrote",
                 "load_positions": "the log collector reads the positions it wrote itself",
                 "load": "settings and migrations: the operator's environment and the project's own files",
                 "parse": "the operator's environment (a setting)", "_decode": "the notifications of our triggers",
                 "read_query": "the declared query parameters: each one's property is above",
                 "read_headers": "the declared headers: each one's property is above",
                 "_read_body": "an upload's bytes, which the package parser reads",
                 "_resolve": "in server/api/openapi.py: the project's own schemas (the addon's is listed)",
                 "resolve": "in server/urlfetch.py: a host name, once the URL it came in was checked"}
PARSING_NAMES = ("parse", "decode", "load", "read_", "cursor_", "_safe_path", "_resolve")


def test_every_parser_in_the_code_is_listed():
    listed = {parser.function.__name__ for parser in untrusted.PARSERS}
    for path, node in _functions_and_calls():
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                any(node.name.lstrip("_").startswith(n.lstrip("_")) for n in PARSING_NAMES):
            assert node.name in listed or node.name in NOT_UNTRUSTED, \
                f"{path}: {node.name} parses text; list it in server/api/untrusted.py PARSERS"


def test_every_header_and_parameter_read_is_declared():
    """Headers are read by a declaration or by the gate, query parameters only through a declaration."""
    app = make_app("postgresql://nobody@127.0.0.1:1/none")
    headers = {item.param.name for item in untrusted.declared_inputs(app) if item.where == "header"}
    headers |= set(untrusted.GATE_HEADERS)
    for path, node in _functions_and_calls():
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "get_header" and str(path) != "server/api/spec.py":  # the declared ones
                assert node.args and isinstance(node.args[0], ast.Constant), f"{path}: a header read by name only"
                assert node.args[0].value in headers, f"{path}: reads {node.args[0].value}; declare it"
            assert node.func.attr not in ("get_param", "get_param_as_int", "get_param_as_list"), \
                f"{path}: reads a query parameter without a declaration (server/api/spec.py Query)"
        if isinstance(node, ast.Attribute) and node.attr == "params" and str(path) not in (
                "server/api/spec.py", "server/app.py") and isinstance(node.value, ast.Name) and node.value.id == "req":
            raise AssertionError(f"{path}: reads req.params without a declaration")


def test_every_responder_declares_its_inputs():
    """A responder without a declaration would take inputs no property above reaches."""
    app = make_app("postgresql://nobody@127.0.0.1:1/none")
    for template, method, responder in untrusted.responders(app):
        assert isinstance(getattr(responder, "spec", None), spec.Operation), f"{method} {template}: no @operation"
    assert {item.param.name for item in untrusted.declared_inputs(app)} >= {"cursor", "Last-Event-ID", "path", "limit"}
