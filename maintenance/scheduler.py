"""`python -m maintenance --daemon`: the procedure daily at the configured time, and on request."""

import datetime

from maintenance.runner import Runner
from server.core import events, times
from server.core.program import Daemon

# Requests arrive through NOTIFY; this poll is the fallback when a notification is missed.
REQUEST_POLL = 1.0


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

    def prepare(self) -> None:
        self.runner = Runner(self.settings.postgres_url, self.log.info, self.stop, read_config=self.usable_config)
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
            self.log.info("%s", outcome.message)

    # --- the loop ---

    def tick(self) -> None:
        self.run_due()
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
