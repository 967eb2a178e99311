"""`python -m procs.entrypoint` refuses every bad setting and configuration file before anything starts.

Each case runs the real entrypoint with all roles on and the embedded PostgreSQL,
so a value that slipped through would write the supervisord config and start
PostgreSQL. A refusal is exit 2 within 2 s, exactly one `Error:` line naming
the variable or key, and nothing written.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from procs import entrypoint
from tests.conftest import ROOT
from tests.pg import free_port

pytestmark = pytest.mark.serial  # each refusal must come within 2 s (make test runs it alone)

URL = "postgresql://ayon@db.example/ayon"
SLUG = "expected 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"
PATH_CHARS = "expected a path without spaces, quotes, backslashes, '%' or ';'"
TASKS = ("cleanup_packages, remove_old_events, remove_old_logs, remove_old_webactions, remove_stale_instances, "
         "vacuum")

# (case id, settings to change; "{tmp}" is the test's folder, "{bind_port}" the server's port),
# the one error line after "Error: "
SETTINGS_CASES = [
    ("run-server-typo", {"AYON_RUN_SERVER": "ture"},
     "AYON_RUN_SERVER='ture': expected one of true/false/1/0/yes/no/on/off"),
    ("run-setup-number", {"AYON_RUN_SETUP": "2"},
     "AYON_RUN_SETUP='2': expected one of true/false/1/0/yes/no/on/off"),
    ("run-maintenance-word", {"AYON_RUN_MAINTENANCE": "sometimes"},
     "AYON_RUN_MAINTENANCE='sometimes': expected one of true/false/1/0/yes/no/on/off"),
    ("no-role", {"AYON_RUN_SERVER": "false", "AYON_RUN_SETUP": "false", "AYON_RUN_MAINTENANCE": "false"},
     "no role enabled: set at least one of AYON_RUN_SERVER, AYON_RUN_SETUP, AYON_RUN_MAINTENANCE to true"),
    ("setup-alone-embedded", {"AYON_RUN_SERVER": "false", "AYON_RUN_MAINTENANCE": "false"},
     "AYON_RUN_SETUP alone needs AYON_POSTGRES_URL: the embedded PostgreSQL runs only beside a long-running role"),
    ("url-scheme", {"AYON_POSTGRES_URL": "mysql://db/ayon"},
     "AYON_POSTGRES_URL=***: expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"),
    ("url-port", {"AYON_POSTGRES_URL": "postgresql://db:99999/ayon"},
     "AYON_POSTGRES_URL=***: the port is not a number from 1 to 65535"),
    ("url-no-database", {"AYON_POSTGRES_URL": "postgresql://db:5432"},
     "AYON_POSTGRES_URL=***: the URL names no database"),
    ("url-sslmode", {"AYON_POSTGRES_URL": URL + "?sslmode=bogus"},
     "AYON_POSTGRES_URL=***: sslmode='bogus': expected one of disable/allow/prefer/require/verify-ca/verify-full"),
    ("url-unknown-option", {"AYON_POSTGRES_URL": URL + "?colour=red"},
     'AYON_POSTGRES_URL=***: libpq cannot read it: invalid URI query parameter: "colour"'),
    ("url-bad-escape", {"AYON_POSTGRES_URL": "postgresql://ayon:pa%zz@db/ayon"},
     "AYON_POSTGRES_URL=***: libpq cannot read it"),
    ("url-timeout", {"AYON_POSTGRES_URL": URL + "?connect_timeout=soon"},
     "AYON_POSTGRES_URL=***: connect_timeout='soon': expected a whole number from 0 to 999999999"),
    ("data-dir-proc", {"AYON_DATA_DIR": "/proc/x"},
     "AYON_DATA_DIR='/proc/x': cannot create this folder (No such file or directory)"),
    ("data-dir-under-a-file", {"AYON_DATA_DIR": "/etc/passwd/sub"},
     "AYON_DATA_DIR='/etc/passwd/sub': /etc/passwd is not a folder"),
    ("data-dir-space", {"AYON_DATA_DIR": "{tmp}/my data"}, "AYON_DATA_DIR='{tmp}/my data': " + PATH_CHARS),
    ("data-dir-percent", {"AYON_DATA_DIR": "{tmp}/100%"}, "AYON_DATA_DIR='{tmp}/100%': " + PATH_CHARS),
    ("data-dir-control", {"AYON_DATA_DIR": "{tmp}/a\x01b"},
     "AYON_DATA_DIR='{tmp}/a\\x01b': contains control characters or bytes that are not text"),
    ("instance-space", {"AYON_INSTANCE_ID": "node 1"}, f"AYON_INSTANCE_ID='node 1': {SLUG}"),
    ("instance-dots", {"AYON_INSTANCE_ID": ".."}, f"AYON_INSTANCE_ID='..': {SLUG}"),
    ("instance-long", {"AYON_INSTANCE_ID": "n" * 64}, f"AYON_INSTANCE_ID='{'n' * 64}': {SLUG}"),
    ("instance-not-utf8", {"AYON_INSTANCE_ID": b"node\xff"},
     "AYON_INSTANCE_ID='node\\udcff': contains control characters or bytes that are not text"),
    ("bind-not-a-host", {"AYON_HTTP_BIND": "not a host:5701"},
     "AYON_HTTP_BIND='not a host:5701': 'not a host' is not a host name or IP address"),
    ("bind-no-port", {"AYON_HTTP_BIND": "8080"}, "AYON_HTTP_BIND='8080': expected HOST:PORT"),
    ("bind-port-range", {"AYON_HTTP_BIND": "0.0.0.0:70000"},
     "AYON_HTTP_BIND='0.0.0.0:70000': expected HOST:PORT with a port from 1 to 65535"),
    ("bind-port-zero", {"AYON_HTTP_BIND": "127.0.0.1:0"},
     "AYON_HTTP_BIND='127.0.0.1:0': expected HOST:PORT with a port from 1 to 65535"),
    ("bind-ipv6-unbracketed", {"AYON_HTTP_BIND": "::1:5000"},
     "AYON_HTTP_BIND='::1:5000': expected HOST:PORT (an IPv6 address goes in brackets: [::]:5000)"),
    ("bind-not-local", {"AYON_HTTP_BIND": "192.0.2.1:5000"},
     "AYON_HTTP_BIND='192.0.2.1:5000': 192.0.2.1 is not an address of this machine"),
    ("bind-unresolvable", {"AYON_HTTP_BIND": "no-such-host.invalid:5000"},
     "AYON_HTTP_BIND='no-such-host.invalid:5000': no-such-host.invalid does not resolve to an address"),
    ("workers-huge", {"AYON_SERVER_WORKERS": "100000"},
     "AYON_SERVER_WORKERS='100000': expected a number from 1 to 64"),
    ("workers-zero", {"AYON_SERVER_WORKERS": "0"}, "AYON_SERVER_WORKERS='0': expected a number from 1 to 64"),
    ("workers-word", {"AYON_SERVER_WORKERS": "two"}, "AYON_SERVER_WORKERS='two': expected a whole number"),
    ("log-level", {"AYON_LOG_LEVEL": "verbose"},
     "AYON_LOG_LEVEL='verbose': expected one of debug/info/warning/error"),
    ("log-format", {"AYON_LOG_FORMAT": "xml"}, "AYON_LOG_FORMAT='xml': expected one of text/json"),
    ("token-short", {"AYON_ADMIN_TOKEN": "secret"}, "AYON_ADMIN_TOKEN=***: expected 8 to 1024 characters"),
    ("token-spaces", {"AYON_ADMIN_TOKEN": "two words here"},
     "AYON_ADMIN_TOKEN=***: expected visible ASCII characters without spaces"),
    ("token-not-ascii", {"AYON_ADMIN_TOKEN": "t\u00f6ken-t\u00f6ken"},
     "AYON_ADMIN_TOKEN=***: expected visible ASCII characters without spaces"),
    ("db-wait-float", {"AYON_DB_WAIT_TIMEOUT": "1e3"}, "AYON_DB_WAIT_TIMEOUT='1e3': expected a whole number"),
    ("db-wait-huge", {"AYON_DB_WAIT_TIMEOUT": "99999"},
     "AYON_DB_WAIT_TIMEOUT='99999': expected a number from 1 to 3600"),
    ("schema-wait-negative", {"AYON_SCHEMA_WAIT_TIMEOUT": "-1"},
     "AYON_SCHEMA_WAIT_TIMEOUT='-1': expected a number from 1 to 86400"),
    ("pool-huge", {"AYON_DB_POOL_SIZE": "100000"}, "AYON_DB_POOL_SIZE='100000': expected a number from 1 to 100"),
    ("pool-zero", {"AYON_DB_POOL_SIZE": "0"}, "AYON_DB_POOL_SIZE='0': expected a number from 1 to 100"),
    ("spool-word", {"AYON_LOG_SPOOL_MAX": "lots"},
     "AYON_LOG_SPOOL_MAX='lots': expected a size such as 512M, 2G or a number of bytes"),
    ("spool-tiny", {"AYON_LOG_SPOOL_MAX": "1K"}, "AYON_LOG_SPOOL_MAX='1K': expected a size from 64K to 1T"),
    ("spool-huge", {"AYON_LOG_SPOOL_MAX": "5T"}, "AYON_LOG_SPOOL_MAX='5T': expected a size from 64K to 1T"),
    ("supervisor-conf-folder", {"AYON_SUPERVISOR_CONF": "{tmp}"},
     "AYON_SUPERVISOR_CONF='{tmp}': is a folder; expected the path of a file to write"),
    ("supervisor-conf-device", {"AYON_SUPERVISOR_CONF": "/dev/null"},
     "AYON_SUPERVISOR_CONF='/dev/null': exists and is not a regular file"),
    ("supervisor-conf-proc", {"AYON_SUPERVISOR_CONF": "/proc/x/supervisord.conf"},
     "AYON_SUPERVISOR_CONF='/proc/x/supervisord.conf': its folder: cannot create this folder "
     "(No such file or directory)"),
    ("supervisor-conf-under-a-file", {"AYON_SUPERVISOR_CONF": "/etc/passwd/supervisord.conf"},
     "AYON_SUPERVISOR_CONF='/etc/passwd/supervisord.conf': its folder: /etc/passwd is not a folder"),
    ("pg-port-range", {"AYON_EMBEDDED_PG_PORT": "70000"},
     "AYON_EMBEDDED_PG_PORT='70000': expected a number from 1 to 65535"),
    ("pg-port-zero", {"AYON_EMBEDDED_PG_PORT": "0"},
     "AYON_EMBEDDED_PG_PORT='0': expected a number from 1 to 65535"),
    ("pg-port-is-the-server-port", {"AYON_EMBEDDED_PG_PORT": "{bind_port}"},
     "AYON_EMBEDDED_PG_PORT='{bind_port}': the same port as AYON_HTTP_BIND '127.0.0.1:{bind_port}'; "
     "the embedded PostgreSQL and the server cannot share it"),
]


def _fifo(folder):
    os.mkfifo(folder / "ayon.yaml")  # reading it would block forever
    return folder / "ayon.yaml"


# (case id, file bytes or a function of the folder returning the path), the error after "AYON_CONFIG_FILE <path>: "
FILE_CASES = [
    ("yaml-syntax", b"maintenance: [\n",
     "not valid YAML at line 2 (expected the node content, but found '<stream end>')"),
    ("not-utf8", b"maintenance:\n  timezone: Europe/Z\xfcrich\n", "not UTF-8 text (byte 0xfc on line 2)"),
    ("unknown-key", b"colour: red\n", "colour: unknown key (known: installer, instances, maintenance, webactions)"),
    ("unknown-task", b"maintenance:\n  tasks:\n    defrag: {enabled: true}\n",
     f"maintenance.tasks.defrag: unknown key (known: {TASKS})"),
    ("timezone-factory", b"maintenance:\n  timezone: Factory\n", "maintenance.timezone: unknown time zone 'Factory'"),
    ("timezone-localtime", b"maintenance:\n  timezone: localtime\n",
     "maintenance.timezone: unknown time zone 'localtime'"),
    ("timezone-mars", b"maintenance:\n  timezone: Mars/Olympus\n",
     "maintenance.timezone: unknown time zone 'Mars/Olympus'"),
    ("time-25h", b"maintenance:\n  time: '25:00'\n", "maintenance.time: expected HH:MM (24-hour), got '25:00'"),
    ("time-unquoted", b"maintenance:\n  time: 4:30\n",
     "maintenance.time: expected HH:MM (24-hour) as text, got the number 270; quote it in YAML: '03:00'"),
    ("retention-negative", b"maintenance:\n  tasks:\n    remove_old_logs: {retention_days: -1}\n",
     "maintenance.tasks.remove_old_logs.retention_days: expected a number from 1 to 3650, got -1"),
    ("retention-too-long", b"maintenance:\n  tasks:\n    remove_old_logs: {retention_days: 4000}\n",
     "maintenance.tasks.remove_old_logs.retention_days: expected a number from 1 to 3650, got 4000"),
    ("enabled-text", b"maintenance:\n  enabled: 'yes'\n", "maintenance.enabled: expected true or false, got 'yes'"),
    ("switch-number", b"maintenance:\n  tasks:\n    vacuum: {enabled: 1}\n",
     "maintenance.tasks.vacuum.enabled: expected true or false, got 1"),
    ("interval-text", b"webactions:\n  check_interval: soon\n",
     "webactions.check_interval: expected a whole number, got 'soon'"),
    ("interval-float", b"installer:\n  poll_interval: 1.5\n",
     "installer.poll_interval: expected a whole number, got 1.5"),
    ("section-list", b"maintenance: []\n", "maintenance: expected a mapping, got []"),
    ("section-empty", b"maintenance:\n", "maintenance: expected a mapping, got None"),
    ("document-list", b"- maintenance\n", "the configuration must be a mapping of keys to values"),
    ("document-text", b"just some words\n", "the configuration must be a mapping of keys to values"),
    ("recursive-alias", b"maintenance: &m\n  tasks: *m\n", "aliases (*name) are not accepted at line 2"),
    ("deep-nesting", b"[" * 100000, "nested deeper than 32 levels at line 1"),
    ("impossible-date", b"maintenance:\n  time: 2026-02-30\n", "a date that cannot be read at line 2"),
    ("huge-number", b"webactions:\n  timeout: " + b"9" * 5000 + b"\n", "a number that cannot be read at line 2"),
    ("too-large", b"#" + b" " * (1024 * 1024) + b"\n", "larger than 1024 KiB"),
    ("a-folder", lambda folder: folder, "not a regular file"),
    ("a-fifo", _fifo, "not a regular file"),
    ("missing", lambda folder: folder / "nowhere" / "ayon.yaml", "cannot read it (No such file or directory)"),
]


@pytest.fixture
def base(tmp_path):
    """An environment that passes validation: all roles, the embedded PostgreSQL, folders under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AYON_")}
    bind_port = free_port()
    env.update(
        AYON_DATA_DIR=str(tmp_path / "data"),
        AYON_SUPERVISOR_CONF=str(tmp_path / "etc" / "supervisord.conf"),
        AYON_HTTP_BIND=f"127.0.0.1:{bind_port}",
        AYON_EMBEDDED_PG_PORT=str(free_port()),
        AYON_INSTANCE_ID="test",
        AYON_ADMIN_TOKEN="test-token",
        PYTHONPATH=str(ROOT),
    )
    return env, {"tmp": str(tmp_path), "bind_port": str(bind_port)}


def run_entrypoint(env: dict, deadline: float = 2.0) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, seconds); whatever it may have started is killed at the end."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "procs.entrypoint"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=deadline + 3)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    took = time.monotonic() - started
    if proc.returncode != 2:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # it started something: end the whole group
        except ProcessLookupError:
            pass
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), took


def assert_refused(env: dict, tmp, expected: str) -> None:
    if any(isinstance(v, bytes) for v in env.values()):
        code, out, err, took = run_entrypoint({os.fsencode(k): os.fsencode(v) for k, v in env.items()})
    else:
        code, out, err, took = run_entrypoint(env)
    assert (code, err) == (2, f"Error: {expected}\n"), out + err
    assert out == ""
    assert took < 2.0, f"took {took:.2f} s"
    # Nothing was started: no supervisord config, no PostgreSQL data (nor anything else) in the data folder.
    conf, data = env["AYON_SUPERVISOR_CONF"], env["AYON_DATA_DIR"]
    if isinstance(conf, str) and conf.startswith(str(tmp)):
        assert not os.path.exists(conf) or os.path.isdir(conf)
    assert not os.path.exists(tmp / "etc" / "supervisord.conf")
    if isinstance(data, str) and data.startswith(str(tmp)) and os.path.isdir(data):
        assert os.listdir(data) == []
    assert not (tmp / "data").exists()


@pytest.mark.parametrize("changes,expected", [c[1:] for c in SETTINGS_CASES], ids=[c[0] for c in SETTINGS_CASES])
def test_a_bad_setting_is_refused_before_anything_starts(changes, expected, base, tmp_path):
    env, names = base
    values = {k: v.format(**names) if isinstance(v, str) else v for k, v in changes.items()}
    env.update(values)
    assert_refused(env, tmp_path, expected.format(**names))


@pytest.mark.parametrize("content,expected", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_a_bad_configuration_file_is_refused_before_anything_starts(content, expected, base, tmp_path):
    env, _ = base
    folder = tmp_path / "conf"
    folder.mkdir()
    if callable(content):
        path = content(folder)
    else:
        path = folder / "ayon.yaml"
        path.write_bytes(content)
    env["AYON_CONFIG_FILE"] = str(path)
    assert_refused(env, tmp_path, f"AYON_CONFIG_FILE {path}: {expected}")


def test_enough_cases():
    assert len(SETTINGS_CASES) >= 40 and len(FILE_CASES) >= 10


def test_the_base_environment_passes(base, tmp_path, monkeypatch):
    """Each case above fails for its one changed value: the rest is accepted."""
    env, _ = base
    good = tmp_path / "good.yaml"
    good.write_text("maintenance:\n  time: '04:30'\n  timezone: Europe/Prague\n")
    env["AYON_CONFIG_FILE"] = str(good)
    for key in [k for k in os.environ if k.startswith("AYON_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("AYON_"):
            monkeypatch.setenv(key, value)
    values = entrypoint.validate()
    assert values.roles == ["server", "setup", "maintenance"]
    assert list(tmp_path.iterdir()) == [good]  # validation wrote nothing


def test_relative_paths_reach_the_programs_resolved(base, tmp_path, monkeypatch):
    """supervisord runs the programs in the checkout's folder: they get the paths the entrypoint checked."""
    env, _ = base
    (tmp_path / "ayon.yaml").write_text("maintenance: {time: '04:30'}\n")
    env.update(AYON_DATA_DIR="data", AYON_SUPERVISOR_CONF="etc/supervisord.conf", AYON_CONFIG_FILE="ayon.yaml")
    for key in [k for k in os.environ if k.startswith("AYON_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("AYON_"):
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    entrypoint.validate()
    assert os.environ["AYON_DATA_DIR"] == str(tmp_path / "data")
    assert os.environ["AYON_SUPERVISOR_CONF"] == str(tmp_path / "etc" / "supervisord.conf")
    assert os.environ["AYON_CONFIG_FILE"] == str(tmp_path / "ayon.yaml")
