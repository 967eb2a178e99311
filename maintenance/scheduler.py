"""`python -m maintenance --daemon`: the procedure daily at the configured time, on request, and to catch up.

Catch-up: when a daemon starts, and once a minute after, it looks at the last
finished run. If that ended more than a day plus CATCH_UP_GRACE ago (with no
finished run ever: the database was set up that long ago), and the next
scheduled run is more than CATCH_UP_GRACE away, it runs once for the slot that
passed last. The run carries that slot's name, as a scheduled run would, so the
fleet-wide lock and the slot check keep it to one run however many daemons
start, and a restart the same day finds the slot taken.
"""

import datetime
import time

from maintenance.runner import Runner
from server.core import events, times
from server.core.program import Daemon

# Requests arrive through NOTIFY; this poll is the fallback when a notification is missed.
REQUEST_POLL = 1.0
CATCH_UP_GRACE = datetime.timedelta(hours=1)
CATCH_UP_CHECK = 60.0  # seconds between two looks for a missed day


def slot_of(next_run: datetime.datetime) -> str:
    """The fleet-wide name of a due time: every daemon due at the same minute computes the same one."""
    return next_run.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def now() -> datetime.datetime:
    """The scheduler's clock (aware, UTC)."""
    return datetime.datetime.now(datetime.timezone.utc)


class MaintenanceDaemon(Daemon):
    """Runs the procedure daily (due times from times.next_run) and on API requests; one run fleet-wide."""

    program = "maintenance"
    channels = (events.CHANNEL,)
    config_keys = ("maintenance.",)
    due: datetime.datetime | None = None
    schedule_key = None
    running = None
    catch_up_on = True
    catch_up_at = 0.0  # monotonic time of the next look for a missed day

    def prepare(self) -> None:
        self.runner = Runner(self.settings.postgres_url, self.log.info, self.stop, read_config=self.usable_config,
                             fail=self.log.error)
        for orphan in self.runner.recover():
            self.log.warning("marked the interrupted run %s failed", orphan)

    def heartbeat_info(self) -> dict:
        due = getattr(self, "due", None)
        return {"next_run": slot_of(due) if due else None, "running": getattr(self, "running", None)}

    def interval(self) -> float:
        return REQUEST_POLL

    # --- the schedule ---

    def configure(self, cfg) -> None:
        """A changed time, zone or switch moves the next due time."""
        section = cfg.maintenance
        self.catch_up_on = section.catch_up
        key = (section.enabled, section.time, section.timezone)
        if key == self.schedule_key:
            return
        self.schedule_key = key
        self.due = None
        if not section.enabled:
            self.log.info("scheduled runs are off (maintenance.enabled = false); requests still run")
            return
        self.due = times.next_run(now(), section.time, section.timezone)
        self.log.info(
            "next maintenance run at %s UTC (%s %s)", self.due.strftime("%Y-%m-%d %H:%M"), section.time,
            section.timezone,
        )

    def run_due(self) -> None:
        """Run the scheduled procedure when its time has come; the next due time is set first."""
        if self.due is None or now() < self.due:
            return
        slot = slot_of(self.due)
        _, at, zone = self.schedule_key
        self.due = times.next_run(max(now(), self.due), at, zone)
        try:
            self.run_once(trigger="schedule", slot=slot)
        except Exception:
            self.log.exception("the scheduled maintenance run failed")

    def run_once(self, **kwargs) -> None:
        self.running = kwargs.get("slot") or kwargs.get("request_id")
        try:
            outcome = self.runner.run(**kwargs)
        finally:
            self.running = None
        if outcome.status == "busy" and not kwargs.get("slot"):
            self.log.debug("%s", outcome.message)  # a request waits for the lock: polled every second
        else:
            (self.log.error if outcome.status in ("failed", "aborted") else self.log.info)("%s", outcome.message)

    # --- the loop ---

    # --- catching up a missed day ---

    def last_finished(self) -> tuple[datetime.datetime | None, str]:
        """When the last finished run ended, else when the database was set up; and which of the two it is."""
        with self.db.transaction() as cur:
            cur.execute("SELECT max(updated_at) FROM events WHERE topic = %s AND status = 'finished'",
                        (events.MAINTENANCE,))
            ended = cur.fetchone()[0]
            if ended is not None:
                return ended, "the last finished run ended"
            cur.execute("SELECT min(applied_at) FROM schema_migrations")
            return cur.fetchone()[0], "no run has finished; the database was set up"

    def slot_taken(self, slot: str) -> bool:
        """Whether a run for this slot started already (it may have failed: that one is for the alerts)."""
        with self.db.transaction() as cur:
            cur.execute("SELECT 1 FROM events WHERE topic = %s AND payload->>'slot' = %s LIMIT 1",
                        (events.MAINTENANCE, slot))
            return cur.fetchone() is not None

    def catch_up(self) -> None:
        """Run once for the slot that passed last when no run finished for over a day (see the module doc)."""
        first = self.catch_up_at == 0.0
        if self.due is None or time.monotonic() < self.catch_up_at:
            return
        self.catch_up_at = time.monotonic() + CATCH_UP_CHECK
        if not self.catch_up_on:
            if first:
                self.log.info("no catch-up: maintenance.catch_up is false")
            return
        moment = now()
        last, what = self.last_finished()
        _, at, zone = self.schedule_key
        slot = slot_of(times.previous_run(moment, at, zone))
        if last is None or moment - last <= datetime.timedelta(days=1) + CATCH_UP_GRACE:
            if first:
                self.log.info("no catch-up needed: %s at %s", what, times.rfc3339(last))
            return
        if self.slot_taken(slot):
            if first:
                self.log.info("no catch-up: %s at %s, and the slot %s has had its run", what, times.rfc3339(last), slot)
            return
        if self.due - moment <= CATCH_UP_GRACE:
            if first:
                self.log.info("no catch-up: %s at %s, and the next run is due within %s", what,
                              times.rfc3339(last), CATCH_UP_GRACE)
            return
        self.log.info("catching up: %s at %s, over a day ago; running for the slot %s", what, times.rfc3339(last), slot)
        try:
            self.run_once(trigger="catch-up", slot=slot)
        except Exception:
            self.log.exception("the catch-up maintenance run failed")

    def tick(self) -> None:
        self.run_due()
        if not self.stop.is_set():
            self.catch_up()
        if not self.stop.is_set():
            self.take_request()

    def take_request(self) -> None:
        """Run the oldest pending request, if the lock is free; otherwise it waits for the next tick."""
        pending = events.query(self.db, topic=events.MAINTENANCE_REQUEST, status="pending", limit=100)
        if not pending:
            return
        request = pending[-1]  # query is newest first
        names = (request["payload"] or {}).get("tasks")
        self.run_once(trigger="request", request_id=request["id"], names=names)

    def notified(self, channel, payload) -> bool:
        """A new pending request wakes the loop at once."""
        return (isinstance(payload, dict) and payload.get("topic") == events.MAINTENANCE_REQUEST
                and payload.get("status") == "pending")
