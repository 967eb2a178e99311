"""Whoever writes the configuration, whatever it imported: every stored key stays.

The declaration is the core's own (server.core.config PROVIDERS), so a writer that
imports only the core knows the task switches and options; a key no release of this
code declares (one written by a newer release during a rolling upgrade) is kept.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from server.core import config
from server.core.errors import ConfigError
from tests.conftest import ROOT

STORED = {
    "maintenance": {
        "time": "04:30",
        "tasks": {
            "remove_old_logs": {"enabled": False, "retention_days": 3},
            "vacuum": {"enabled": False, "max_minutes": 5},
            "from_the_future": {"enabled": True, "depth": 9},  # a task a newer release added
        },
        "colour": "red",  # an option a newer release added
    },
    "webactions": {"timeout": 120},
    "future": {"section": {"key": [1, 2]}},
}

# Imports the core only: not maintenance, not procs, not the web app; says which wing modules it ended up with.
WRITER = textwrap.dedent("""
    import json, sys
    from server.core import config, db
    database = db.Database(sys.argv[1], size=1)
    with database.transaction() as cur:
        _, changes = config.update(cur, json.loads(sys.argv[2]), "writer")
    database.close()
    print(json.dumps({"changes": sorted(changes),
                      "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("maintenance", "procs"))}))
""")


def store(database, doc):
    database.execute("INSERT INTO server_config (id, data) VALUES (1, %s) "
                     "ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data", (json.dumps(doc),))


def stored(database):
    with database.transaction() as cur:
        return config.stored(cur)


def write_alone(database_url, patch) -> dict:
    result = subprocess.run([sys.executable, "-c", WRITER, database_url, json.dumps(patch)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_writer_importing_only_the_core_keeps_every_stored_key(database, database_url):
    store(database, STORED)
    done = write_alone(database_url, {"webactions": {"check_interval": 60},
                                      "maintenance": {"tasks": {"remove_old_events": {"retention_days": 30}}}})
    assert done["changes"] == ["maintenance.tasks.remove_old_events.retention_days", "webactions.check_interval"]
    # The core loaded the task registry itself; the writer never imported it.
    assert "maintenance.registry" in done["imported"]
    expected = json.loads(json.dumps(STORED))
    expected["webactions"]["check_interval"] = 60
    expected["maintenance"]["tasks"]["remove_old_events"] = {"retention_days": 30}
    assert stored(database) == expected


def test_a_writer_importing_only_the_core_knows_every_task_key(database, database_url):
    done = write_alone(database_url, {"maintenance": {"tasks": {"vacuum": {"enabled": False}}}})
    assert done["changes"] == ["maintenance.tasks.vacuum.enabled"]
    assert stored(database)["maintenance"]["tasks"]["vacuum"]["enabled"] is False


def test_an_update_still_refuses_an_unknown_key_in_the_patch(database):
    store(database, STORED)
    with database.transaction() as cur, pytest.raises(ConfigError) as caught:
        config.update(cur, {"future": {"section": {"key": 3}}}, "tester")
    assert str(caught.value).startswith("future: unknown key (known: ")
    assert stored(database) == STORED


def test_reading_a_document_with_unknown_keys_uses_the_declared_ones(database):
    store(database, STORED)
    with database.transaction() as cur:
        cfg = config.get(cur)
    assert cfg.maintenance.time == "04:30"
    assert cfg.maintenance.tasks["remove_old_logs"].retention_days == 3
    assert "future" not in cfg and "from_the_future" not in cfg.maintenance.tasks


def test_an_update_answers_the_configuration_in_effect_and_repairs_only_what_it_sets(database):
    store(database, {"webactions": {"timeout": -1, "check_interval": "often"}, "future": 1})
    with database.transaction() as cur:
        doc, changes = config.update(cur, {"webactions": {"timeout": 600}}, "tester")
    assert changes == {"webactions.timeout": (-1, 600)}
    assert doc == config.usable(stored(database))[0] and "future" not in doc
    assert doc["webactions"]["check_interval"] == 300  # refused where stored: the default is in effect
    # The value this code refuses stays stored: a newer release may accept it.
    assert stored(database) == {"webactions": {"timeout": 600, "check_interval": "often"}, "future": 1}


def test_a_patch_under_a_stored_non_mapping_replaces_it(database):
    store(database, {"maintenance": 5, "future": True})
    with database.transaction() as cur:
        _, changes = config.update(cur, {"maintenance": {"time": "02:00"}}, "tester")
    assert changes == {"maintenance.time": ("03:00", "02:00")}
    assert stored(database) == {"maintenance": {"time": "02:00"}, "future": True}
