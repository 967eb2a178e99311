"""`python -m maintenance --daemon`: the procedure daily at the configured time, and on request."""

import datetime
import time

from maintenance.runner import REQUEST_TOPIC, Runner
from procs.daemon import Daemon
from server import config, events
from server.db import BROKEN

# Requests arrive through NOTIFY; this poll is the fallback when a notification is missed.
REQUEST_POLL = 1.0
CONFIG_CHANNEL = "ayon_config"


def slot_of(next_run: datetime.datetime) -> str:
    """The fleet-wide name of a due time: every daemon due at the same minute computes the same one."""
    return next_run.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def now() -> datetime.datetime:
    """The scheduler's clock (aware, UTC)."""
    return datetime.datetime.now(datetime.timezone.utc)


class MaintenanceDaemon(Daemon):
    """Runs the procedure daily (due times from config.next_run) and on API requests; one run fleet-wide."""

    program = "maintenance"
    config_keys = ("maintenance.",)

    def prepare(self) -> None:
        self.runner = Runner(self.settings.postgres_url, self.log.info, self.stop, read_config=self.usable_config)
        for orphan in self.runner.recover():
            self.log.warning("marked the interrupted run %s failed", orphan)
        self.due: datetime.datetime | None = None
        self.schedule_key = None
        self.listener = None
        self.running = None
        self.reschedule()

    def heartbeat_info(self) -> dict:
        due = getattr(self, "due", None)
        return {"next_run": slot_of(due) if due else None, "running": getattr(self, "running", None)}

    def interval(self) -> float:
        return REQUEST_POLL

    # --- the schedule ---

    def reschedule(self) -> None:
        """Re-read the configuration; a changed time, zone or switch moves the next due time."""
        with self.db.transaction() as cur:
            section = self.usable_config(cur)["maintenance"]
        key = (section["enabled"], section["time"], section["timezone"])
        if key == self.schedule_key:
            return
        self.schedule_key = key
        self.due = None
        if not section["enabled"]:
            self.log.info("scheduled runs are off (maintenance.enabled = false); requests still run")
            return
        self.due = config.next_run(now(), section["time"], section["timezone"])
        self.log.info(
            "next maintenance run at %s UTC (%s %s)", self.due.strftime("%Y-%m-%d %H:%M"), section["time"],
            section["timezone"],
        )

    def reschedule_safely(self) -> None:
        try:
            self.reschedule()
        except BROKEN as exc:
            # The listener reconnects and rereads the configuration; the old schedule holds meanwhile.
            self.log.warning("could not reread the configuration: %s", str(exc).strip().splitlines()[0])
            self.schedule_key = None

    def run_due(self) -> None:
        """Run the scheduled procedure when its time has come; the next due time is set first."""
        if self.due is None or now() < self.due:
            return
        slot = slot_of(self.due)
        _, at, zone = self.schedule_key
        self.due = config.next_run(max(now(), self.due), at, zone)
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
            self.log.info("%s", outcome.message)

    # --- the loop ---

    def tick(self) -> None:
        self.run_due()
        if not self.stop.is_set():
            self.take_request()

    def take_request(self) -> None:
        """Run the oldest pending request, if the lock is free; otherwise it waits for the next tick."""
        pending = events.query(self.db, topic=REQUEST_TOPIC, status="pending", limit=100)
        if not pending:
            return
        request = pending[-1]  # query is newest first
        names = (request["payload"] or {}).get("tasks")
        self.run_once(trigger="request", request_id=request["id"], names=names)

    def wait(self, seconds: float) -> None:
        """Sleep until the next poll, waking at once for a request; a configuration change reschedules."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            for channel, payload in self.listen(min(0.5, max(0.0, deadline - time.monotonic()))):
                if channel == CONFIG_CHANNEL:
                    self.reschedule_safely()
                elif isinstance(payload, dict) and payload.get("topic") == REQUEST_TOPIC:
                    if payload.get("status") == "pending":
                        return

    def listen(self, timeout: float) -> list:
        try:
            if self.listener is None:
                self.listener = events.Listener(
                    self.settings.postgres_url, (events.CHANNEL, CONFIG_CHANNEL), "ayon-maintenance-listen"
                )
                self.reschedule()  # a change may have been missed while not listening
            return self.listener.wait(timeout)
        except BROKEN as exc:
            self.log.warning("listening for events failed, will retry: %s", str(exc).strip().splitlines()[0])
            if self.listener is not None:
                self.listener.close()
            self.listener = None
            self.stop.wait(timeout)
            return []
