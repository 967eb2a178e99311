"""Settings: parsed values and the exact error lines."""

import subprocess
import sys

import pytest

from server.core import instancelock, settings, urls
from server.core.errors import ConfigError

SETTING = {setting.name: setting for setting in settings.SETTINGS}

SLUG = "expected 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"

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
    ("AYON_SERVER_WORKERS", "64", 64),
    ("AYON_SERVER_WORKERS", "0", "AYON_SERVER_WORKERS='0': expected a number from 1 to 64"),
    ("AYON_SERVER_WORKERS", "-3", "AYON_SERVER_WORKERS='-3': expected a number from 1 to 64"),
    ("AYON_SERVER_WORKERS", "100000", "AYON_SERVER_WORKERS='100000': expected a number from 1 to 64"),
    ("AYON_SERVER_WORKERS", "two", "AYON_SERVER_WORKERS='two': expected a whole number"),
    ("AYON_SERVER_WORKERS", "2.5", "AYON_SERVER_WORKERS='2.5': expected a whole number"),
    ("AYON_SERVER_WORKERS", "+2", "AYON_SERVER_WORKERS='+2': expected a whole number"),
    ("AYON_SERVER_WORKERS", "\u0662", "AYON_SERVER_WORKERS='\u0662': expected a whole number"),  # an Arabic-Indic 2
    ("AYON_DB_WAIT_TIMEOUT", "1e3", "AYON_DB_WAIT_TIMEOUT='1e3': expected a whole number"),
    ("AYON_DB_WAIT_TIMEOUT", "3601", "AYON_DB_WAIT_TIMEOUT='3601': expected a number from 1 to 3600"),
    ("AYON_SCHEMA_WAIT_TIMEOUT", "86400", 86400),
    ("AYON_DB_POOL_SIZE", "100", 100),
    ("AYON_DB_POOL_SIZE", "100000", "AYON_DB_POOL_SIZE='100000': expected a number from 1 to 100"),
    ("AYON_EMBEDDED_PG_PORT", "65535", 65535),
    ("AYON_EMBEDDED_PG_PORT", "70000", "AYON_EMBEDDED_PG_PORT='70000': expected a number from 1 to 65535"),
    ("AYON_POSTGRES_URL", "postgresql://u:p@db:5432/ayon", "postgresql://u:p@db:5432/ayon"),
    ("AYON_POSTGRES_URL", "postgres://db/ayon", "postgres://db/ayon"),
    ("AYON_POSTGRES_URL", "mysql://db/ayon", "AYON_POSTGRES_URL=***: expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"),
    ("AYON_POSTGRES_URL", "postgresql://db:port/ayon", "AYON_POSTGRES_URL=***: the port is not a number from 1 to 65535"),
    ("AYON_POSTGRES_URL", "postgresql://db:99999/ayon", "AYON_POSTGRES_URL=***: the port is not a number from 1 to 65535"),
    ("AYON_POSTGRES_URL", "postgresql:///ayon", "AYON_POSTGRES_URL=***: the URL names no host"),
    ("AYON_POSTGRES_URL", "postgresql://db:5432", "AYON_POSTGRES_URL=***: the URL names no database"),
    ("AYON_POSTGRES_URL", "db:5432/ayon", "AYON_POSTGRES_URL=***: expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"),
    ("AYON_POSTGRES_URL", "postgresql://u@db/ayon?sslmode=verify-full&connect_timeout=3",
     "postgresql://u@db/ayon?sslmode=verify-full&connect_timeout=3"),
    ("AYON_POSTGRES_URL", "postgresql://u@db/ayon?sslmode=bogus",
     "AYON_POSTGRES_URL=***: sslmode='bogus': expected one of disable/allow/prefer/require/verify-ca/verify-full"),
    ("AYON_POSTGRES_URL", "postgresql://u@db/ayon?colour=red",
     'AYON_POSTGRES_URL=***: libpq cannot read it: invalid URI query parameter: "colour"'),
    # libpq's own message would quote the password: it is not repeated
    ("AYON_POSTGRES_URL", "postgresql://u:hunter%zz@db/ayon", "AYON_POSTGRES_URL=***: libpq cannot read it"),
    ("AYON_POSTGRES_URL", "postgresql://u@db/ayon?connect_timeout=soon",
     "AYON_POSTGRES_URL=***: connect_timeout='soon': expected a whole number from 0 to 999999999"),
    # The kernel refuses a keep-alive idle time of 0: libpq would fail only at the first connect.
    ("AYON_POSTGRES_URL", "postgresql://u@db/ayon?keepalives_idle=0",
     "AYON_POSTGRES_URL=***: keepalives_idle='0': expected a whole number from 1 to 32767"),
    ("AYON_POSTGRES_URL", "postgresql://u@db/ayon?dbname=other",
     "AYON_POSTGRES_URL=***: name the database in the path, not as ?dbname="),
    ("AYON_HTTP_BIND", "127.0.0.1:8080", "127.0.0.1:8080"),
    ("AYON_HTTP_BIND", "8080", "AYON_HTTP_BIND='8080': expected HOST:PORT"),
    ("AYON_HTTP_BIND", "0.0.0.0:70000", "AYON_HTTP_BIND='0.0.0.0:70000': expected HOST:PORT with a port from 1 to 65535"),
    ("AYON_HTTP_BIND", "[::]:5000", "[::]:5000"),
    ("AYON_HTTP_BIND", "not a host:5701", "AYON_HTTP_BIND='not a host:5701': 'not a host' is not a host name or IP address"),
    ("AYON_HTTP_BIND", "::1:5000", "AYON_HTTP_BIND='::1:5000': expected HOST:PORT (an IPv6 address goes in brackets: [::]:5000)"),
    ("AYON_HTTP_BIND", "[::g]:5000", "AYON_HTTP_BIND='[::g]:5000': [::g] is not an IPv6 address"),
    ("AYON_LOG_FORMAT", "JSON", "json"),
    ("AYON_LOG_FORMAT", "xml", "AYON_LOG_FORMAT='xml': expected one of text/json"),
    ("AYON_LOG_LEVEL", "Warning", "warning"),
    ("AYON_LOG_LEVEL", "verbose", "AYON_LOG_LEVEL='verbose': expected one of debug/info/warning/error"),
    ("AYON_INSTANCE_ID", "node-1", "node-1"),
    ("AYON_INSTANCE_ID", "node 1", f"AYON_INSTANCE_ID='node 1': {SLUG}"),
    ("AYON_INSTANCE_ID", "..", f"AYON_INSTANCE_ID='..': {SLUG}"),
    ("AYON_INSTANCE_ID", "n" * 64, f"AYON_INSTANCE_ID='{'n' * 64}': {SLUG}"),
    ("AYON_LOG_SPOOL_MAX", "512M", 512 * 1024 * 1024),
    ("AYON_LOG_SPOOL_MAX", "lots", "AYON_LOG_SPOOL_MAX='lots': expected a size such as 512M, 2G or a number of bytes"),
    ("AYON_LOG_SPOOL_MAX", "1K", "AYON_LOG_SPOOL_MAX='1K': expected a size from 64K to 1T"),
    ("AYON_LOG_SPOOL_MAX", "1T", 1024**4),
    ("AYON_ADMIN_TOKEN", "  s3cret-token ", "s3cret-token"),
    ("AYON_ADMIN_TOKEN", "test-token", "test-token"),
    ("AYON_ADMIN_TOKEN", "s3cret", "AYON_ADMIN_TOKEN=***: expected 8 to 1024 characters"),
    ("AYON_ADMIN_TOKEN", "two words", "AYON_ADMIN_TOKEN=***: expected visible ASCII characters without spaces"),
    ("AYON_DATA_DIR", "/srv/a b", "AYON_DATA_DIR='/srv/a b': expected a path without spaces, quotes, backslashes, '%' or ';'"),
    ("AYON_DATA_DIR", "/srv/100%", "AYON_DATA_DIR='/srv/100%': expected a path without spaces, quotes, backslashes, '%' or ';'"),
    ("AYON_DATA_DIR", "/srv/a\nb", "AYON_DATA_DIR='/srv/a\\nb': contains control characters or bytes that are not text"),
    ("AYON_CONFIG_FILE", "", ""),
]


@pytest.mark.parametrize("name,raw,expected", CASES)
def test_parse(name, raw, expected):
    setting = SETTING[name]
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


def test_embedded_postgres_when_url_unset_inside_an_instance(tmp_path):
    values = settings.load({"AYON_EMBEDDED_PG_PORT": "6543", "AYON_DATA_DIR": str(tmp_path)})
    assert values.embedded_postgres
    # Outside an instance nothing will start it: a missing setting, refused at once (tests/test_no_database.py).
    with pytest.raises(ConfigError, match=r"^AYON_POSTGRES_URL is not set, and no instance"):
        _ = values.postgres_url
    held = instancelock.DataFolderLock(str(tmp_path), "test")  # as the instance's supervisord holds it
    try:
        # The programs' role, not the superuser; its password stays in a 0600 file the URL names.
        assert values.postgres_url == f"postgresql://ayon@127.0.0.1:6543/ayon?passfile={tmp_path}/secrets/ayon.pgpass"
    finally:
        held.give_up()


def test_settings_command_masks_secrets():
    env = {"AYON_POSTGRES_URL": "postgresql://ayon:hunter2@db/ayon", "AYON_ADMIN_TOKEN": "tok-12345", "PATH": "/usr/bin"}
    out = subprocess.run([sys.executable, "-m", "server.core.settings"], env=env, capture_output=True, text=True, check=True,
                         cwd=settings_root()).stdout
    assert "hunter2" not in out and "tok-12345" not in out
    assert "postgresql://ayon:***@db/ayon" in out
    assert "AYON_ADMIN_TOKEN" in out and "***" in out


def test_settings_command_exits_2_on_a_bad_value():
    env = {"AYON_RUN_SETUP": "maybe", "PATH": "/usr/bin"}
    result = subprocess.run([sys.executable, "-m", "server.core.settings"], env=env, capture_output=True, text=True,
                            cwd=settings_root())
    assert result.returncode == 2
    assert result.stderr == "Error: AYON_RUN_SETUP='maybe': expected one of true/false/1/0/yes/no/on/off\n"


def test_readme_tables_are_current():
    from scripts import readme

    text = (settings_root() / "README.md").read_text()
    assert readme.render(text) == text, "a README table is stale: run `make readme`"


def settings_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


VERIFY_CASES = [
    # (variable, value; "{tmp}" is the test's folder), the exact error line, or None when accepted
    ("AYON_DATA_DIR", "/proc/x", "AYON_DATA_DIR='/proc/x': cannot create this folder (No such file or directory)"),
    ("AYON_DATA_DIR", "/etc/passwd/sub", "AYON_DATA_DIR='/etc/passwd/sub': /etc/passwd is not a folder"),
    ("AYON_DATA_DIR", "{tmp}/new/deeper", None),
    ("AYON_SUPERVISOR_CONF", "{tmp}", "AYON_SUPERVISOR_CONF='{tmp}': is a folder; expected the path of a file to write"),
    ("AYON_SUPERVISOR_CONF", "/dev/null", "AYON_SUPERVISOR_CONF='/dev/null': exists and is not a regular file"),
    ("AYON_SUPERVISOR_CONF", "/etc/passwd/s.conf",
     "AYON_SUPERVISOR_CONF='/etc/passwd/s.conf': its folder: /etc/passwd is not a folder"),
    ("AYON_SUPERVISOR_CONF", "{tmp}/etc/supervisord.conf", None),
    ("AYON_HTTP_BIND", "127.0.0.1:5000", None),
    ("AYON_HTTP_BIND", "localhost:5000", None),
    ("AYON_HTTP_BIND", "192.0.2.1:5000", "AYON_HTTP_BIND='192.0.2.1:5000': 192.0.2.1 is not an address of this machine"),
    ("AYON_HTTP_BIND", "no-such-host.invalid:5000",
     "AYON_HTTP_BIND='no-such-host.invalid:5000': no-such-host.invalid does not resolve to an address"),
]


@pytest.mark.parametrize("name,value,error", VERIFY_CASES, ids=[f"{c[0]}={c[1]}" for c in VERIFY_CASES])
def test_verify_checks_the_machine_and_leaves_no_trace(name, value, error, tmp_path):
    value = value.format(tmp=tmp_path)
    before = sorted(tmp_path.rglob("*"))
    values = settings.load({"AYON_POSTGRES_URL": "postgresql://db/ayon",
                            "AYON_DATA_DIR": str(tmp_path / "data"), **{name: value}})
    if error is None:
        settings.verify(values)
    else:
        with pytest.raises(ConfigError) as caught:
            settings.verify(values)
        assert str(caught.value) == error.format(tmp=tmp_path)
    assert sorted(tmp_path.rglob("*")) == before  # checked, not created


def test_verify_refuses_the_server_on_the_embedded_postgres_port(tmp_path):
    values = settings.load({"AYON_HTTP_BIND": "0.0.0.0:6543", "AYON_EMBEDDED_PG_PORT": "6543",
                            "AYON_DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigError) as caught:
        settings.verify(values)
    assert str(caught.value) == ("AYON_EMBEDDED_PG_PORT='6543': the same port as AYON_HTTP_BIND '0.0.0.0:6543'; "
                                 "the embedded PostgreSQL and the server cannot share it")


def test_verify_checks_only_what_the_roles_use(tmp_path):
    # Setup alone (a Kubernetes Job, read-only root) writes no supervisord config and listens nowhere.
    env = {"AYON_RUN_SERVER": "false", "AYON_RUN_MAINTENANCE": "false", "AYON_POSTGRES_URL": "postgresql://db/ayon",
           "AYON_DATA_DIR": str(tmp_path), "AYON_SUPERVISOR_CONF": "/proc/x/supervisord.conf",
           "AYON_HTTP_BIND": "192.0.2.1:5000"}
    settings.verify(settings.load(env))
    with pytest.raises(ConfigError, match=r"^AYON_SUPERVISOR_CONF='/proc/x/supervisord.conf': its folder: "):
        settings.verify(settings.load({**env, "AYON_RUN_MAINTENANCE": "true"}))
    with pytest.raises(ConfigError, match=r"^AYON_HTTP_BIND='192.0.2.1:5000': "):
        settings.verify(settings.load({**env, "AYON_RUN_SERVER": "true", "AYON_SUPERVISOR_CONF": str(tmp_path / "s")}))


@pytest.mark.parametrize("url,shown", [
    ("postgresql://ayon:hunter2@db:5432/ayon?sslmode=require", "postgresql://ayon:***@db:5432/ayon?sslmode=require"),
    ("postgresql://ayon@db/ayon?password=hunter2&sslmode=require",
     "postgresql://ayon@db/ayon?password=***&sslmode=require"),
    ("postgresql://ayon@db/ayon", "postgresql://ayon@db/ayon"),
])
def test_the_postgres_url_is_shown_without_its_password(url, shown):
    """`python -m server.core.settings` shows the URL whole but for the password, wherever the URL carries it."""
    assert urls.masked(url) == shown
