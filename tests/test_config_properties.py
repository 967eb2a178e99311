"""Property tests: whatever the edge accepts, every consumer accepts too.

Generated configuration documents go through PATCH /api/config's and
AYON_CONFIG_FILE's validation; each accepted one must be usable by the
scheduler, webactions, the installer, the maintenance tasks (their options,
described and run) and the API that shows them. Generated environments go
through the settings; each accepted one must be accepted by supervisord's
config parser, gunicorn's address parser and libpq.
"""

import datetime
import json
import os
import socket
import threading
import types
import zoneinfo

import falcon.testing
import psycopg2
import pytest
import yaml
from gunicorn.util import parse_address
from hypothesis import HealthCheck, event, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from supervisor.options import ServerOptions

from maintenance.registry import plan
from maintenance.runner import Runner
from maintenance.scheduler import slot_of
from procs.installer import Installer
from procs.webactions import Webactions
from server.core import config, db, settings, times, values, webactions
from server.core.errors import ConfigError
from supervision import generator
from tests.apiclient import AUTH, make_app
from tests.pg import free_port

SETTING = {setting.name: setting for setting in settings.SETTINGS}

# --- configuration documents ---

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
ZONES = sorted(zoneinfo.available_timezones())
ZONE_LIKE = st.one_of(
    st.sampled_from(ZONES),
    st.sampled_from(["Factory", "localtime", "posixrules", "right/UTC", "posix/Europe/Prague", "utc", " UTC ",
                     "Europe/prague", "", "Mars/Olympus", "../etc/passwd", "/etc/localtime", "UTC\x00", "EST5EDT"]),
)
TIME_LIKE = st.one_of(
    st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 30), st.integers(0, 70)),
    st.builds(lambda h, m: f"{h}:{m}", st.integers(0, 30), st.integers(0, 70)),
    st.sampled_from([" 03:00 ", "3am", "24:00", "23:59", "00:00", "12:00:00", "", "１２:００"]),
)
SCALAR = st.one_of(
    st.booleans(), st.none(), TEXT, ZONE_LIKE, TIME_LIKE,
    st.integers(-10, 100), st.integers(-2**40, 2**40), st.sampled_from([0, 1, 5, 59, 60, 3650, 3651, 86400, 86401]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1.0, 1.5, -0.0]),
)
VALUE = st.one_of(SCALAR, st.lists(SCALAR, max_size=2), st.dictionaries(TEXT, SCALAR, max_size=2))


def plausible(field: config.Field) -> st.SearchStrategy:
    """Values near what the field takes: its type, around its range; often right, sometimes just off."""
    if field.name.endswith(".timezone"):
        return ZONE_LIKE
    if field.name.endswith(".time"):
        return TIME_LIKE
    if isinstance(field.default, bool):
        return st.booleans()
    if isinstance(field.default, int):
        return st.one_of(st.integers(-2, 120), st.integers(-2, 4_000_000),
                         st.sampled_from([0, 1, 4, 5, 100, 101, 3600, 3650, 3651, 36500, 86400, 2592000]))
    return VALUE


def passes(field: config.Field, value) -> bool:
    try:
        field.kind(value)
        return True
    except ValueError:
        return False


def valid(field: config.Field) -> st.SearchStrategy:
    if field.name.endswith(".timezone"):
        return st.sampled_from(sorted(values.time_zones()))
    return plausible(field).filter(lambda v: passes(field, v))


def shaped(node: dict, junk: bool) -> st.SearchStrategy:
    """Some of the node's declared keys; with junk, now and then a wrong value, shape or an undeclared key."""
    children = {}
    for key, child in node.items():
        if isinstance(child, config.Field):
            children[key] = st.one_of(valid(child), valid(child), plausible(child), VALUE) if junk else valid(child)
        else:
            children[key] = st.one_of(shaped(child, junk), shaped(child, junk), VALUE) if junk else shaped(child, junk)
    declared = st.fixed_dictionaries({}, optional=children)
    if not junk:
        return declared
    stray = st.dictionaries(st.sampled_from(["colour", "Enabled", "tasks ", "1"]), SCALAR, min_size=1, max_size=1)
    return st.one_of(declared, declared, declared, st.builds(lambda a, b: {**a, **b}, declared, stray))


def document() -> st.SearchStrategy:
    """Documents shaped like the declaration: half of them right, half with something wrong somewhere."""
    tree = config.tree()
    return st.one_of(shaped(tree, junk=False), shaped(tree, junk=True))


NOW = st.datetimes(min_value=datetime.datetime(1990, 1, 1), max_value=datetime.datetime(2090, 1, 1),
                   timezones=st.just(datetime.timezone.utc))


def accepted(doc) -> bool:
    try:
        config.validate_patch(doc)
        return True
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return False


def check_consumers(doc: dict, now: datetime.datetime) -> None:
    """Every in-process consumer of the configuration uses the document without an error."""
    cfg = config.View(doc)
    section = cfg.maintenance
    # The scheduler and GET /api/maintenance: a due time after now, within two days, and the next after it.
    due = times.next_run(now, section.time, section.timezone)
    assert now < due <= now + datetime.timedelta(hours=50)
    assert times.next_run(due, section.time, section.timezone) > due
    assert slot_of(due)
    # webactions
    web = types.SimpleNamespace()
    Webactions.configure(web, cfg)
    assert Webactions.interval(web) >= 1.0 and web.timeout >= 1
    # the installer
    inst = types.SimpleNamespace(healthy=True, seconds_to_retry=None)
    Installer.configure(inst, cfg)
    assert Installer.interval(inst) >= 1.0 and inst.max_attempts >= 1
    # each maintenance task: its switch and options as the runner hands them over
    for task, enabled, options in plan(cfg):
        assert isinstance(enabled, bool)
        assert "{" not in task.describe(options)
        for option in task.options:
            assert option.kind(options[option.name]) == options[option.name]


@hsettings(max_examples=400, deadline=None)
@given(doc=document(), now=NOW)
def test_whatever_the_api_or_the_file_accepts_every_consumer_accepts(doc, now, tmp_path_factory):
    ok = accepted(doc)
    event("accepted" if ok else "refused")
    # AYON_CONFIG_FILE decides the same as PATCH /api/config.
    path = tmp_path_factory.getbasetemp() / "property-ayon.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    try:
        config.load_file(str(path))
        assert ok, f"the file accepted what the API refuses: {doc!r}"
    except ConfigError as exc:
        assert not ok, f"the file refused what the API accepts: {exc}"
    if not ok:
        return
    merged, _ = config.merge(config.defaults(), doc)
    # Stored as JSON and read back, the document is whole and every value still passes.
    stored = json.loads(json.dumps(merged))
    usable, problems = config.usable(stored)
    assert problems == [] and usable == merged
    check_consumers(usable, now)


def test_every_zone_the_validator_accepts_schedules_through_a_year():
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    for zone in sorted(values.time_zones()):
        assert values.TimeZone()(zone) == zone
        for hours in range(0, 365 * 24, 7 * 24 + 5):  # a week and five hours apart: every weekday and hour
            now = start + datetime.timedelta(hours=hours)
            for at in ("00:00", "02:30", "23:59"):
                due = times.next_run(now, at, zone)
                assert now < due <= now + datetime.timedelta(hours=50), (zone, now, at)
    for name in values.NOT_PLACES:
        with pytest.raises(ValueError):
            values.TimeZone()(name)


@pytest.fixture
def api(database_url):
    return falcon.testing.TestClient(make_app(database_url), headers=AUTH)


@hsettings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=document())
def test_what_patch_accepts_runs_everywhere(doc, api, database, database_url):
    """Against the real database: stored by PATCH, read by the API, the tasks and the daemons' queries."""
    before = api.simulate_get("/api/config").json
    result = api.simulate_patch("/api/config", json=doc)
    if not accepted(doc):
        assert result.status_code == 400, result.text
        assert "\n" not in result.json["error"]["description"]
        assert api.simulate_get("/api/config").json == before
        return
    assert result.status_code == 200, result.text
    current = api.simulate_get("/api/config").json
    for path in ("/api/maintenance", "/api/instances"):
        assert api.simulate_get(path).status_code == 200, path
    with database.transaction() as cur:
        assert config.usable(config.stored(cur))[1] == []
    check_consumers(current, datetime.datetime.now(datetime.timezone.utc))
    webactions.expire(database, current["webactions"]["timeout"])
    inst = types.SimpleNamespace(db=database, settings=types.SimpleNamespace(instance_id="test"))
    Installer.configure(inst, config.View(current))
    Installer._measure(inst)
    # Every task runs with these options (the lock, the event, each task's SQL).
    outcome = Runner(database_url, lambda line: None, threading.Event()).run(trigger="manual")
    assert outcome.status == "finished", outcome.message


# --- settings ---

CLOSED_PORT = free_port()  # nothing listens there: libpq refuses to connect, after checking every option
URL_OPTIONS = st.dictionaries(
    st.sampled_from(["sslmode", "gssencmode", "channel_binding", "target_session_attrs", "connect_timeout",
                     "keepalives", "keepalives_idle", "application_name", "port", "options", "load_balance_hosts"]),
    st.one_of(*[st.sampled_from(["disable", "prefer", "require", "verify-full", "any", "read-write", "primary",
                                 "random", "0", "1", "10", "-1", "x", "", "1.5", "-c work_mem=1MB"])] * 3, TEXT),
    max_size=3,
)


def url_of(options: dict, database: str) -> str:
    from urllib.parse import quote

    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in options.items())
    return f"postgresql://ayon@127.0.0.1:{CLOSED_PORT}/{quote(database, safe='')}" + (f"?{query}" if query else "")


@hsettings(max_examples=150, deadline=None)
@given(options=URL_OPTIONS, database=st.one_of(st.just("ayon"), st.just("ayon"), TEXT))
@example(options={"keepalives_idle": "0"}, database="ayon")  # found once: the kernel refuses it at connect
def test_a_postgres_url_the_settings_accept_libpq_accepts(options, database):
    url = url_of(options, database)
    try:
        SETTING["AYON_POSTGRES_URL"].parse(url)
    except settings.ConfigError:
        event("refused")
        return
    event("accepted")
    assert db.database_name(url) and psycopg2.extensions.parse_dsn(db.with_database(url, "postgres"))
    with pytest.raises(psycopg2.OperationalError) as caught:
        psycopg2.connect(url, connect_timeout=2)
    # Refused for the closed port (or, with gssencmode=require, for want of Kerberos credentials on this
    # machine), never for an option: libpq read and accepted every value.
    assert "invalid" not in str(caught.value).lower(), str(caught.value)


def mostly(good: st.SearchStrategy, other: st.SearchStrategy, share: int = 7) -> st.SearchStrategy:
    """`good` in `share` of 10 draws, `other` in the rest."""
    return st.integers(0, 9).flatmap(lambda n: good if n < share else other)


PLAIN_PART = st.text(st.sampled_from("ab-_.~#$()[]{}=,é"), min_size=1, max_size=8)
PATH_PART = st.builds(lambda a, odd, b: a + odd + b, PLAIN_PART,
                      mostly(st.just(""), st.sampled_from(list(" %;'\"\\\t"))), PLAIN_PART)
SLUG = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


@hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(folder=PATH_PART, instance=mostly(SLUG, st.one_of(TEXT, st.sampled_from(["..", "x" * 64]))),
       workers=mostly(st.integers(1, 64).map(str), st.one_of(TEXT, st.integers(-1, 100).map(str))))
def test_settings_the_entrypoint_accepts_make_a_config_supervisord_reads(folder, instance, workers, tmp_path):
    env = {"AYON_DATA_DIR": str(tmp_path / folder), "AYON_INSTANCE_ID": instance, "AYON_SERVER_WORKERS": workers,
           "AYON_POSTGRES_URL": "postgresql://db/ayon", "AYON_SUPERVISOR_CONF": str(tmp_path / "s.conf")}
    try:
        values = settings.load(env)
        settings.verify(values)
    except settings.ConfigError:
        event("refused")
        return
    event("accepted")
    conf = generator.write(values, values.supervisor_conf)
    options = ServerOptions()
    options.realize(["-c", str(conf)])
    rundir = str(generator.run_dir(values))
    assert options.pidfile == os.path.join(rundir, "supervisord.pid")
    assert options.identifier == f"ayon-{values.instance_id}"


BIND = st.one_of(
    st.builds(lambda h, p: f"{h}:{p}", st.sampled_from(["127.0.0.1", "0.0.0.0", "localhost", "LOCALHOST", "[::1]",
                                                         "[::]", "::", "[::ffff:127.0.0.1]", "host name", "[127.0.0.1]",
                                                         "", "127.1", "0", "tcp://127.0.0.1", "unix:/tmp/s"]),
              st.one_of(st.integers(-1, 70000).map(str), st.sampled_from(["", "http", "080", "٣٠٠٠"]))),
    TEXT,
)


@hsettings(max_examples=200, deadline=None)
@given(bind=BIND)
def test_a_bind_address_the_settings_accept_gunicorn_binds(bind):
    try:
        value = SETTING["AYON_HTTP_BIND"].parse(bind)
        settings.check_bind(value)
    except (settings.ConfigError, ValueError):
        event("refused")
        return
    event("accepted")
    host, port = values.split_bind(value)
    address = parse_address(value)
    assert address == (host.lower(), port)
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:  # as gunicorn's TCPSocket/TCP6Socket would
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            assert exc.errno == 98, exc  # only "in use" is left to gunicorn's retries
