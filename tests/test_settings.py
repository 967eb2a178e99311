"""Settings: parsed values and the exact error lines."""

import subprocess
import sys

import pytest

from server import settings
from server.errors import ConfigError

CASES = [
    # (variable, raw value, expected value or the exact error line)
    *[("AYON_RUN_SERVER", word, True) for word in ("true", "TRUE", "True", "1", "yes", "YES", "on", "On", " true ", "\tyes\n")],
    *[("AYON_RUN_SERVER", word, False) for word in ("false", "FALSE", "0", "no", "No", "off", "OFF", "  off  ")],
    ("AYON_RUN_SETUP", "", True),
    ("AYON_RUN_SETUP", "   ", True),
    ("AYON_RUN_MAINTENANCE", None, True),
    ("AYON_RUN_SERVER", "ture", "AYON_RUN_SERVER='ture': expected one of true/false/1/0/yes/no/on/off"),
    ("AYON_RUN_SETUP", "2", "AYON_RUN_SETUP='2': expected one of true/false/1/0/yes/no/on/off"),
    ("AYON_RUN_MAINTENANCE", "y", "AYON_RUN_MAINTENANCE='y': expected one of true/false/1/0/yes/no/on/off"),
    ("AYON_RUN_SERVER", "truefalse", "AYON_RUN_SERVER='truefalse': expected one of true/false/1/0/yes/no/on/off"),
    ("AYON_SERVER_WORKERS", "4", 4),
    ("AYON_SERVER_WORKERS", " 8 ", 8),
    ("AYON_SERVER_WORKERS", "0", "AYON_SERVER_WORKERS='0': expected a whole number of at least 1"),
    ("AYON_SERVER_WORKERS", "-3", "AYON_SERVER_WORKERS='-3': expected a whole number of at least 1"),
    ("AYON_SERVER_WORKERS", "two", "AYON_SERVER_WORKERS='two': expected a whole number"),
    ("AYON_SERVER_WORKERS", "2.5", "AYON_SERVER_WORKERS='2.5': expected a whole number"),
    ("AYON_DB_WAIT_TIMEOUT", "1e3", "AYON_DB_WAIT_TIMEOUT='1e3': expected a whole number"),
    ("AYON_POSTGRES_URL", "postgresql://u:p@db:5432/ayon", "postgresql://u:p@db:5432/ayon"),
    ("AYON_POSTGRES_URL", "postgres://db/ayon", "postgres://db/ayon"),
    ("AYON_POSTGRES_URL", "mysql://db/ayon", "AYON_POSTGRES_URL=***: expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"),
    ("AYON_POSTGRES_URL", "postgresql://db:port/ayon", "AYON_POSTGRES_URL=***: the port is not a number from 1 to 65535"),
    ("AYON_POSTGRES_URL", "postgresql://db:99999/ayon", "AYON_POSTGRES_URL=***: the port is not a number from 1 to 65535"),
    ("AYON_POSTGRES_URL", "postgresql:///ayon", "AYON_POSTGRES_URL=***: the URL names no host"),
    ("AYON_POSTGRES_URL", "postgresql://db:5432", "AYON_POSTGRES_URL=***: the URL names no database"),
    ("AYON_POSTGRES_URL", "db:5432/ayon", "AYON_POSTGRES_URL=***: expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"),
    ("AYON_HTTP_BIND", "127.0.0.1:8080", "127.0.0.1:8080"),
    ("AYON_HTTP_BIND", "8080", "AYON_HTTP_BIND='8080': expected HOST:PORT"),
    ("AYON_HTTP_BIND", "0.0.0.0:70000", "AYON_HTTP_BIND='0.0.0.0:70000': expected HOST:PORT with a port from 1 to 65535"),
    ("AYON_LOG_FORMAT", "JSON", "json"),
    ("AYON_LOG_FORMAT", "xml", "AYON_LOG_FORMAT='xml': expected one of text/json"),
    ("AYON_LOG_LEVEL", "Warning", "warning"),
    ("AYON_LOG_LEVEL", "verbose", "AYON_LOG_LEVEL='verbose': expected one of debug/info/warning/error"),
    ("AYON_INSTANCE_ID", "node-1", "node-1"),
    ("AYON_INSTANCE_ID", "node 1", "AYON_INSTANCE_ID='node 1': expected letters, digits, '-', '_' or '.'"),
    ("AYON_LOG_SPOOL_MAX", "512M", 512 * 1024 * 1024),
    ("AYON_LOG_SPOOL_MAX", "lots", "AYON_LOG_SPOOL_MAX='lots': expected a size such as 512M, 2G or a number of bytes"),
    ("AYON_ADMIN_TOKEN", "  s3cret ", "s3cret"),
]


@pytest.mark.parametrize("name,raw,expected", CASES)
def test_parse(name, raw, expected):
    setting = settings.BY_NAME[name]
    if isinstance(expected, str) and expected.startswith(name + "="):
        with pytest.raises(ConfigError) as caught:
            setting.parse(raw)
        assert str(caught.value) == expected
    else:
        assert setting.parse(raw) == expected


def test_every_default_passes_its_own_validator():
    for setting in settings.SETTINGS:
        setting.parse(None)


def test_load_names_the_first_bad_variable():
    with pytest.raises(ConfigError, match=r"^AYON_SERVER_WORKERS='many': "):
        settings.load({"AYON_SERVER_WORKERS": "many"})


def test_embedded_postgres_when_url_unset():
    values = settings.load({"AYON_EMBEDDED_PG_PORT": "6543"})
    assert values.embedded_postgres
    assert values.postgres_url == "postgresql://postgres@127.0.0.1:6543/ayon"


def test_settings_command_masks_secrets():
    env = {"AYON_POSTGRES_URL": "postgresql://ayon:hunter2@db/ayon", "AYON_ADMIN_TOKEN": "tok-123", "PATH": "/usr/bin"}
    out = subprocess.run([sys.executable, "-m", "server.settings"], env=env, capture_output=True, text=True, check=True, cwd=settings_root()).stdout
    assert "hunter2" not in out and "tok-123" not in out
    assert "postgresql://ayon:***@db/ayon" in out
    assert "AYON_ADMIN_TOKEN" in out and "***" in out


def test_settings_command_exits_2_on_a_bad_value():
    env = {"AYON_RUN_SETUP": "maybe", "PATH": "/usr/bin"}
    result = subprocess.run([sys.executable, "-m", "server.settings"], env=env, capture_output=True, text=True, cwd=settings_root())
    assert result.returncode == 2
    assert result.stderr == "Error: AYON_RUN_SETUP='maybe': expected one of true/false/1/0/yes/no/on/off\n"


def test_readme_settings_table_is_current():
    readme = (settings_root() / "README.md").read_text()
    start = readme.index("<!-- settings-table -->") + len("<!-- settings-table -->\n")
    end = readme.index("<!-- /settings-table -->")
    assert readme[start:end] == settings.markdown_table(), "README settings table is stale: run `make readme`"


def settings_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent
