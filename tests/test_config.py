"""The server configuration: defaults, merge update, YAML seeding, errors naming the key."""

import pytest

from server import config, events
from server.errors import ConfigError


def test_defaults_match_the_design_shape():
    doc = config.defaults()
    assert doc["maintenance"]["enabled"] is True
    assert doc["maintenance"]["time"] == "03:00"
    assert doc["maintenance"]["timezone"] == "UTC"
    assert doc["maintenance"]["tasks"]["remove_old_logs"] == {"enabled": True, "retention_days": 7}
    assert doc["maintenance"]["tasks"]["remove_old_events"] == {"enabled": True, "retention_days": 90}
    assert doc["maintenance"]["tasks"]["vacuum"] == {"enabled": True}
    assert doc["webactions"]["check_interval"] == 300


def test_every_default_passes_its_validator():
    for field in config.fields():
        assert field.validator(field.default) == field.default


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
    ({"maintenance": {"tasks": {"nope": {"enabled": True}}}}, "maintenance.tasks.nope.enabled: unknown key"),
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
        assert config.get(cur) == config.defaults()


def test_yaml_file_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("maintenance:\n  tasks:\n    vacuum: {enabled: maybe}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: maintenance\.tasks\.vacuum\.enabled: expected true or false, got 'maybe'$"):
        config.load_file(str(bad))
    broken = tmp_path / "broken.yaml"
    broken.write_text("maintenance: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML at line 2$"):
        config.load_file(str(broken))
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read it \(No such file or directory\)$"):
        config.load_file(str(tmp_path / "missing.yaml"))
