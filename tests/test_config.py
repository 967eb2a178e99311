"""The server configuration: defaults, merge update, YAML seeding, errors naming the key."""

import datetime
import os

import pytest

from server.core import config, events, times
from server.core.errors import ConfigError


def test_defaults_match_the_design_shape():
    doc = config.defaults()
    assert doc["maintenance"]["enabled"] is True
    assert doc["maintenance"]["time"] == "03:00"
    assert doc["maintenance"]["timezone"] == "UTC"
    assert doc["maintenance"]["tasks"]["remove_old_logs"] == {"enabled": True, "max_minutes": 0, "retention_days": 7}
    assert doc["maintenance"]["tasks"]["remove_old_events"] == {"enabled": True, "max_minutes": 0, "retention_days": 90}
    assert doc["maintenance"]["tasks"]["vacuum"] == {"enabled": True, "max_minutes": 0}
    assert doc["webactions"]["check_interval"] == 300


def test_every_default_passes_its_validator():
    for field in config.fields():
        assert field.kind(field.default) == field.default


def test_seed_and_merge_update(database):
    with database.transaction() as cur:
        assert config.seed(cur)
        assert not config.seed(cur)
        doc, changes = config.update(cur, {"maintenance": {"time": "01:15", "tasks": {"vacuum": {"enabled": False}}}}, "tester")
    assert changes == {"maintenance.time": ("03:00", "01:15"), "maintenance.tasks.vacuum.enabled": (True, False)}
    with database.transaction() as cur:
        stored = config.get(cur)
    assert stored["maintenance"]["time"] == "01:15"
    assert stored["maintenance"]["timezone"] == "UTC"
    changed = events.query(database, topic="server.config_changed")
    assert len(changed) == 1 and changed[0]["summary"]["by"] == "tester"
    with database.transaction() as cur:
        _, again = config.update(cur, {"maintenance": {"time": "01:15"}}, "tester")
    assert again == {}
    assert len(events.query(database, topic="server.config_changed")) == 1


@pytest.mark.parametrize("patch,error", [
    ({"maintenance": {"time": "3am"}}, "maintenance.time: expected HH:MM (24-hour), got '3am'"),
    ({"maintenance": {"timezone": "Mars/Olympus"}}, "maintenance.timezone: unknown time zone 'Mars/Olympus'"),
    ({"maintenance": {"enabled": "yes"}}, "maintenance.enabled: expected true or false, got 'yes'"),
    ({"maintenance": {"tasks": {"nope": {"enabled": True}}}},
     "maintenance.tasks.nope: unknown key (known: cleanup_packages, remove_old_events, remove_old_logs, "
     "remove_old_webactions, remove_stale_instances, vacuum)"),
    ({"maintenance": {"timezone": "Factory"}}, "maintenance.timezone: unknown time zone 'Factory'"),
    ({"maintenance": {"timezone": "localtime"}}, "maintenance.timezone: unknown time zone 'localtime'"),
    ({"maintenance": {"time": 180}},
     "maintenance.time: expected HH:MM (24-hour) as text, got the number 180; quote it in YAML: '03:00'"),
    ({"maintenance": {"tasks": {"vacuum": {"enabled": True, "x": "y" * 100}}}},
     "maintenance.tasks.vacuum.x: unknown key (known: enabled, max_minutes)"),
    ({"webactions": {"timeout": "y" * 100}},
     "webactions.timeout: expected a whole number, got '" + "y" * 56 + "..."),  # quoted, cut short
    ({"maintenance": {"tasks": {"remove_old_logs": {"retention_days": 0}}}},
     "maintenance.tasks.remove_old_logs.retention_days: expected a number from 1 to 3650, got 0"),
    ({"maintenance": 5}, "maintenance: expected a mapping, got 5"),
    ({"webactions": {"timeout": True}}, "webactions.timeout: expected a whole number, got True"),
    (["x"], "the configuration must be a mapping of keys to values"),
])
def test_invalid_input_names_the_key(patch, error, database):
    with database.transaction() as cur:
        config.seed(cur)
    with pytest.raises(ConfigError) as caught:
        with database.transaction() as cur:
            config.update(cur, patch, "tester")
    assert str(caught.value) == error
    with database.transaction() as cur:
        assert config.get(cur).as_dict() == config.defaults()


def test_yaml_file_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("maintenance:\n  tasks:\n    vacuum: {enabled: maybe}\n")
    expected = r"bad\.yaml: maintenance\.tasks\.vacuum\.enabled: expected true or false, got 'maybe'$"
    with pytest.raises(ConfigError, match=expected):
        config.load_file(str(bad))
    broken = tmp_path / "broken.yaml"
    broken.write_text("maintenance: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML at line 2 \(expected the node content, "
                                          r"but found '<stream end>'\)$"):
        config.load_file(str(broken))
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read it \(No such file or directory\)$"):
        config.load_file(str(tmp_path / "missing.yaml"))


FILE_CASES = {
    # name: (file bytes, or a callable making the path from the folder; the error after "AYON_CONFIG_FILE <path>: ")
    "not-utf8": (b"maintenance:\n  time: '04:00'\n  timezone: Europe/Z\xfcrich\n",
                 "not UTF-8 text (byte 0xfc on line 3)"),
    "control-character": ("maintenance:\n  time: '04:00\x07'\n".encode(),
                          "not valid YAML (special characters are not allowed)"),
    "recursive-alias": (b"maintenance: &m\n  tasks: *m\n", "aliases (*name) are not accepted at line 2"),
    "deep-nesting": (b"[" * 100000 + b"]" * 100000, "nested deeper than 32 levels at line 1"),
    "impossible-date": (b"maintenance:\n  time: 2026-02-30\n", "a date that cannot be read at line 2"),
    "huge-number": (b"webactions:\n  timeout: " + b"9" * 5000 + b"\n", "a number that cannot be read at line 2"),
    "unquoted-time": (b"maintenance:\n  time: 3:00\n",  # YAML 1.1 reads base 60
                      "maintenance.time: expected HH:MM (24-hour) as text, got the number 180; quote it in YAML: '03:00'"),
    "too-large": (b"# " + b"x" * (1024 * 1024) + b"\n", "larger than 1024 KiB"),
    "a-folder": (lambda folder: folder, "not a regular file"),
    "missing": (lambda folder: folder / "missing.yaml", "cannot read it (No such file or directory)"),
    "a-fifo": (lambda folder: (os.mkfifo(folder / "fifo"), folder / "fifo")[1], "not a regular file"),
    "top-level-list": (b"- maintenance\n", "the configuration must be a mapping of keys to values"),
}


@pytest.mark.parametrize("name", FILE_CASES)
def test_yaml_file_refusals_are_one_line(name, tmp_path):
    content, error = FILE_CASES[name]
    if callable(content):
        path = content(tmp_path)
    else:
        path = tmp_path / "ayon.yaml"
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        config.load_file(str(path))
    assert str(caught.value) == f"AYON_CONFIG_FILE {path}: {error}"


def test_usable_keeps_the_fallback_for_values_it_cannot_use():
    good = config.defaults()
    good["maintenance"]["timezone"] = "Europe/Prague"
    stored = {"maintenance": {"timezone": "Factory", "time": "05:00", "tasks": 7, "colour": "red"},
              "webactions": {"timeout": -1}, "retired": {"key": 1}}
    doc, problems = config.usable(stored, good)
    assert doc["maintenance"]["timezone"] == "Europe/Prague"  # the last good value
    assert doc["maintenance"]["time"] == "05:00"  # a good stored value is taken
    assert doc["maintenance"]["tasks"] == good["maintenance"]["tasks"]
    assert doc["webactions"]["timeout"] == 3600
    assert "colour" not in doc["maintenance"] and "retired" not in doc  # undeclared keys are dropped
    assert [(p.key, p.value, p.error, p.kept) for p in problems] == [
        ("maintenance.timezone", "Factory", "unknown time zone 'Factory'", "Europe/Prague"),
        ("webactions.timeout", -1, "expected a number from 1 to 2592000, got -1", 3600),
        ("maintenance.tasks", 7, "expected a mapping, got 7", good["maintenance"]["tasks"]),
    ]
    assert config.usable(["not", "a", "mapping"])[0] == config.defaults()
    assert config.usable(stored)[0]["maintenance"]["timezone"] == "UTC"  # without a fallback: the default


def test_get_never_returns_a_value_its_validator_refuses(database):
    database.execute("UPDATE server_config SET data = %s WHERE id = 1",
                     ('{"maintenance": {"timezone": "Factory", "tasks": {"remove_old_events": {"retention_days": 0}}}}',))
    with database.transaction() as cur:
        doc = config.get(cur)
    assert doc["maintenance"]["timezone"] == "UTC"
    assert doc["maintenance"]["tasks"]["remove_old_events"]["retention_days"] == 90


def utc(*args):
    return datetime.datetime(*args, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize("now,at,zone,due", [
    (utc(2026, 5, 1, 2, 59), "03:00", "UTC", utc(2026, 5, 1, 3, 0)),
    (utc(2026, 5, 1, 3, 0), "03:00", "UTC", utc(2026, 5, 2, 3, 0)),  # due means strictly later
    (utc(2026, 5, 1, 12, 0), "04:17", "Europe/Prague", utc(2026, 5, 2, 2, 17)),
    (utc(2026, 5, 1, 23, 30), "01:00", "Asia/Tokyo", utc(2026, 5, 2, 16, 0)),  # already the 2nd in Tokyo
    (utc(2026, 5, 1, 1, 0), "20:00", "America/Los_Angeles", utc(2026, 5, 1, 3, 0)),  # still April 30 there
    # Europe/Prague, spring forward on 2026-03-29 at 02:00: 02:30 does not exist, it falls at 03:30 CEST
    (utc(2026, 3, 28, 12, 0), "02:30", "Europe/Prague", utc(2026, 3, 29, 1, 30)),
    # fall back on 2026-10-25 at 03:00: 02:30 happens twice, due at the first
    (utc(2026, 10, 24, 12, 0), "02:30", "Europe/Prague", utc(2026, 10, 25, 0, 30)),
    (utc(2026, 10, 25, 0, 30), "02:30", "Europe/Prague", utc(2026, 10, 26, 1, 30)),  # not again an hour later
    (utc(2026, 12, 31, 23, 59), "00:00", "UTC", utc(2027, 1, 1, 0, 0)),
])
def test_next_run(now, at, zone, due):
    assert times.next_run(now, at, zone) == due  # the daemon's due time and what GET /api/maintenance shows
