"""The base of every long-running program: start, wait for the schema, heartbeat, loop, wake on NOTIFY, stop.

A program declares what it waits for (`channels`), which configuration keys
it uses (`config_keys`: a change re-reads them and calls `configure`), how
often it works at the latest (`interval`) and what one pass does (`tick`).
The base owns everything around that: the LISTEN connection and its
reconnects, the configuration refresh, the heartbeat, the signals and the
stop flag. `python -m procs.<name>` is then three lines.
"""

import logging
import signal
import threading
import time
from typing import Any

from server.core import config, events, instancelock, layout, migrations, retry
from server.core import settings as settings_mod
from server.core.db import (
    BROKEN,
    CHECK_NOTIFY,
    PROGRAM_LIMITS,
    Database,
    check_listen,
    listen_refused,
    notification_arrives,
)
from server.core.errors import AyonError, DatabaseUnavailable, first_line, run_main
from server.core.heartbeat import Heartbeat
from server.core.logs import setup_logging

_NOTHING = object()
# Between LISTEN reconnects, and the longest a wait blocks before it looks at the stop flag.
RETRY_SECONDS = 1.0
# How long a NOTIFY may take to reach a new LISTEN before the URL is refused as a transaction pooler's.
LISTEN_CHECK_SECONDS = 5.0


def start(program: str, spool: bool = True) -> tuple[settings_mod.Settings, logging.Logger]:
    """Load settings (a bad one raises ConfigError: one line, exit 2) and set up logging."""
    values = settings_mod.load()
    return values, setup_logging(program, values, spool=spool)


def open_database(values: settings_mod.Settings, program: str, limits: dict | None = PROGRAM_LIMITS) -> Database:
    """The program's pool, with PROGRAM_LIMITS unless it bounds its statements itself (maintenance: per task)."""
    return Database(values.postgres_url, size=values.db_pool_size, application_name=f"ayon-{program}",
                    idle=values.db_idle_seconds, **(limits or {}))


def heartbeat_database(values: settings_mod.Settings, program: str) -> Database:
    """A heartbeat's own pool of one that connects for each beat and closes after it (`idle=0`).

    A beat every heartbeat.INTERVAL s would keep a pooled connection from ever idling out: one open
    for each program of every instance, for a few milliseconds of work in five seconds.
    """
    return Database(values.postgres_url, size=1, application_name=f"ayon-{program}-heartbeat", idle=0,
                    **PROGRAM_LIMITS)


def setup_pending(values: settings_mod.Settings) -> bool:
    """This instance runs setup and it has not finished: until it has, the role and the database may not
    exist, and connecting would only fail (and make PostgreSQL log the failed authentication).

    `run/setup.done` is removed when the instance's supervisord starts and touched by the watchdog
    when setup exited 0; a program started outside an instance (no `instance.lock` held) never waits.
    """
    return (values.run_setup and not layout.setup_done(values.data_dir).exists()
            and instancelock.holder(values.data_dir) is not None)


def wait_for_setup(values: settings_mod.Settings, stop: threading.Event, say) -> bool:
    """Wait quietly (one line) until this instance's setup has finished; False when stopped first."""
    if not setup_pending(values):
        return True
    say("waiting for setup to finish before connecting to PostgreSQL")

    def done() -> None:
        if setup_pending(values):
            raise retry.NotYet("setup has not finished")

    try:
        retry.Retry("setup to finish", first=0.2, factor=1, jitter=0, timeout=values.schema_wait_timeout,
                    stop=stop).call(done)
    except retry.GaveUp as exc:
        if exc.stopped:
            return False
        raise DatabaseUnavailable(f"setup did not finish within {values.schema_wait_timeout} s "
                                  "(AYON_SCHEMA_WAIT_TIMEOUT): see its lines above") from None
    return True


def session_setting(values: settings_mod.Settings) -> str:
    """The variable that gives the URL LISTEN uses."""
    return "AYON_POSTGRES_SESSION_URL" if values["postgres_session_url"] else "AYON_POSTGRES_URL"


def check_session_url(values: settings_mod.Settings, log: logging.Logger) -> None:
    """Refuse (ConfigError, exit 2) a session URL on which LISTEN would stay silent; unreachable, it is left
    to the LISTEN retries. The NOTIFY goes through AYON_POSTGRES_URL: behind a pooler, one server
    connection fewer for the check."""
    try:
        check_listen(values.session_url, session_setting(values), LISTEN_CHECK_SECONDS, values.postgres_url)
    except BROKEN as exc:
        log.warning("could not check that LISTEN works: %s", first_line(exc))


class Daemon:
    """Subclasses set `program`, `channels`, `config_keys` and implement `tick()` (and `configure()`)."""

    program = "daemon"
    # NOTIFY channels whose notifications wake the loop for a tick (see `notified`).
    channels: tuple[str, ...] = ()
    # Prefixes of the configuration keys this program uses: a change calls `configure`,
    # and only their problems are reported.
    config_keys: tuple[str, ...] = ()

    def __init__(self, settings: settings_mod.Settings | None = None, log: logging.Logger | None = None):
        # Given by a caller that has its own (a test); else read from the environment.
        self.settings, self.log = (settings, log) if settings is not None else start(self.program)
        self.db = open_database(self.settings, self.program)
        self.stop = threading.Event()
        self.stop_reason = ""
        self.good_config = config.defaults()  # the last configuration this program could use
        self.rejected: dict[str, object] = {}  # key -> the refused stored value, reported once
        self.listener = None
        self.listening = retry.Outage(self.log, "listening for notifications")
        self.last_tick = time.monotonic()

    # --- what a program implements ---

    def prepare(self) -> None:
        """Called once the schema is current, before the first tick."""

    def configure(self, cfg: config.View) -> None:
        """Apply the configuration in effect: at start and after every change of it."""

    def tick(self) -> None:
        raise NotImplementedError

    def interval(self) -> float:
        """The longest pause between two ticks."""
        return 5.0

    def notified(self, channel: str, payload: Any) -> bool:
        """Whether a notification on one of `channels` calls for a tick now."""
        return True

    def heartbeat_info(self) -> dict:
        return {}

    # --- configuration ---

    def usable_config(self, cur) -> config.View:
        """The stored configuration as this program can use it; a value it cannot use keeps its last good one.

        A stored value its validator refuses (written into the database around the
        API) must not stop the program: it is logged and recorded once as a
        `server.config_rejected` event, and the program goes on with what it had.
        """
        doc, problems = config.usable(config.stored(cur), self.good_config)
        mine = {p.key: p for p in problems if self._uses(p.key)}
        for key in [k for k in self.rejected if k not in mine]:
            self.log.info("configuration %s is usable again", key)
            del self.rejected[key]
        for key, problem in mine.items():
            if self.rejected.get(key, _NOTHING) != problem.value:
                self.rejected[key] = problem.value
                self._report_rejected(problem)
        self.good_config = doc
        return config.View(doc)

    def refresh_config(self) -> None:
        """Re-read the configuration and apply it; while PostgreSQL is away the last one holds."""
        try:
            with self.db.transaction() as cur:
                cfg = self.usable_config(cur)
        except BROKEN as exc:
            self.log.warning("could not re-read the configuration, keeping the last one: %s", first_line(exc))
            return
        self.configure(cfg)

    def _uses(self, key: str) -> bool:
        return key == "(top)" or any(key.startswith(p) or p.startswith(key + ".") for p in self.config_keys)

    def _report_rejected(self, problem) -> None:
        where = f"{self.settings.instance_id}/{self.program}"
        text = (f"{where} cannot use the stored {problem.key} = {config.shown(problem.value)} "
                f"({problem.error}); it keeps {config.shown(problem.kept)}")
        self.log.error("%s", text)
        try:
            events.dispatch(self.db, events.CONFIG_REJECTED, status="failed", description=text, summary={
                "key": problem.key, "value": problem.value, "error": problem.error, "kept": problem.kept,
                "instance": self.settings.instance_id, "program": self.program,
            })
        except BROKEN:
            del self.rejected[problem.key]  # recorded on the next read instead

    # --- waiting ---

    def _channels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.channels + ((events.CONFIG_CHANNEL,) if self.config_keys else ())))

    def wait(self) -> None:
        """Pause until the next tick is due (`interval()` after the last one started, re-read as the
        configuration changes: a shorter interval takes effect at once); a notification on `channels`
        that calls for work (or a reconnect, after which one may have been missed) ends it sooner."""
        while not self.stop.is_set():
            remaining = self.last_tick + self.interval() - time.monotonic()
            if remaining <= 0:
                return
            if not self._channels():
                self.stop.wait(remaining)
                continue
            if self._listen(min(remaining, RETRY_SECONDS)):
                return

    def _start_listening(self) -> bool:
        """LISTEN on the program's channels; False (said once per outage) when PostgreSQL cannot be reached."""
        try:
            self.listener = events.Listener(self.settings.session_url, self._channels(),
                                            f"ayon-{self.program}-listen")
            return True
        except BROKEN as exc:
            self._listen_failed(exc)
            return False

    def _check_listening(self) -> None:
        """Refuse (ConfigError, exit 2) a session URL on which LISTEN stays silent: a NOTIFY sent through
        the pool must reach the new listener. Checked on the program's own connections, it costs none of
        its own; a connection lost meanwhile is left to the LISTEN retries."""
        try:
            arrived = notification_arrives(self.listener.conn, lambda channel: self.db.execute(CHECK_NOTIFY, (channel,)),
                                           LISTEN_CHECK_SECONDS)
        except BROKEN as exc:
            self.log.warning("could not check that LISTEN works: %s", first_line(exc))
            self.listener.close()
            self.listener = None  # the loop connects again
            return
        if not arrived:
            self.listener.close()
            self.listener = None
            raise listen_refused(self.settings.session_url, session_setting(self.settings), LISTEN_CHECK_SECONDS)

    def _listen_failed(self, exc: BaseException) -> None:
        self.listening.failed(exc)
        if self.listener is not None:
            self.listener.close()
        self.listener = None

    def _listen(self, timeout: float) -> bool:
        """Wait for notifications up to `timeout`; True when the loop should tick now."""
        if self.listener is None:
            if not self._start_listening():
                self.stop.wait(timeout)
                return False
            self.listening.ok()
            self.refresh_config()  # a change may have been missed while not listening
            return True
        try:
            found = self.listener.wait(timeout)
        except BROKEN as exc:
            self._listen_failed(exc)
            self.stop.wait(timeout)
            return False
        wake = False
        for channel, payload in found:
            if channel == events.CONFIG_CHANNEL and self.config_keys:
                self.refresh_config()
            if channel in self.channels and self.notified(channel, payload):
                wake = True
        return wake

    # --- the loop ---

    def _on_signal(self, signum, frame) -> None:
        # Signal handlers only record the signal; the loop acts on it.
        self.stop_reason = signal.Signals(signum).name
        self.stop.set()

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            if not wait_for_setup(self.settings, self.stop, self.log.info):
                self.log.info("stopping on %s before setup finished", self.stop_reason)
                return 0
            migrations.wait_until_current(
                self.db, self.settings.schema_wait_timeout, self.log.info, stop=self.stop
            )
        except AyonError as exc:
            if self.stop.is_set():
                self.log.info("stopping on %s before the schema was current", self.stop_reason)
                return 0
            self.log.error("%s", exc)
            return exc.exit_code
        if self._channels():
            # LISTEN before the configuration is read and the first tick catches up: what is stored
            # after that catch-up then wakes the loop, instead of waiting for the next poll.
            if self._start_listening():
                self._check_listening()
        heartbeat = Heartbeat(heartbeat_database(self.settings, self.program), self.settings.instance_id,
                              self.program, self.stop, self.heartbeat_info)
        heartbeat.start()
        self.refresh_config()
        self.prepare()
        self.log.info("%s started", self.program)
        while not self.stop.is_set():
            self.last_tick = time.monotonic()  # a failed tick is retried after an interval, not at once
            try:
                self.tick()
            except Exception:
                self.log.exception("%s: tick failed, will retry", self.program)
            if not self.stop.is_set():
                self.wait()
        if self.listener is not None:
            self.listener.close()
        heartbeat.say_farewell()  # a clean stop: the row no longer counts as running
        self.log.info("%s stopping on %s", self.program, self.stop_reason or "request")
        return 0

    @classmethod
    def main(cls) -> None:
        """Entry point of `python -m procs.<program>`: expected errors are one line, a bug its traceback."""
        run_main(lambda: cls().run(), program=cls.program)
