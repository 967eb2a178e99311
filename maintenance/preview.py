"""The dry run: what each enabled task would remove now, in rows and estimated bytes, changing nothing.

It takes no lock, so a real run is never kept waiting by a preview, and its
statements are bounded by a timeout. `python -m maintenance --dry-run` and
`POST /api/maintenance/run {"dry_run": true}` record it as a
`server.maintenance.preview` event; `GET /api/maintenance/preview` (with
candidate option values) records nothing.
"""

import contextlib
import threading
import time

import psycopg2

from maintenance import registry, space
from server.core import events
from server.core.db import BROKEN
from server.core.errors import first_line

# A dry run's statements: bounded, so a preview asked from the dashboard cannot run away either.
STATEMENT_TIMEOUT = "60s"


class _Bounded:
    """A database whose transactions carry a statement timeout and use one core: what a preview runs on."""

    def __init__(self, db):
        self.db = db

    @contextlib.contextmanager
    def transaction(self):
        with self.db.transaction() as cur:
            cur.execute(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'")
            cur.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            yield cur


def count(db, cfg, names: list[str] | None = None, stop: threading.Event | None = None) -> dict:
    """What each enabled task would remove now under `cfg` (a config.View): rows and estimated bytes.

    Changes nothing and takes no lock: a real run is never kept waiting by a preview.
    A task whose count fails is reported with its error; the others are still counted.
    """
    started = time.monotonic()
    bounded = _Bounded(db)
    found = []
    for task, on, options in registry.plan(cfg, names):
        entry = {"name": task.name, "enabled": on, "description": task.describe(options), "rows": None,
                 "bytes_estimate": None, "error": None}
        if on and task.preview is not None:
            ctx = registry.Context(bounded, options, lambda message: None, stop or threading.Event(), None)
            try:
                entry["rows"], entry["bytes_estimate"] = (int(x) for x in task.preview(ctx))
            except (psycopg2.Error, *BROKEN) as exc:
                entry["error"] = first_line(exc)
        found.append(entry)
    return {
        "dry_run": True,
        "tasks": found,
        "rows_total": sum(t["rows"] or 0 for t in found),
        "bytes_estimate_total": sum(t["bytes_estimate"] or 0 for t in found),
        "duration_s": round(time.monotonic() - started, 3),
    }


def record(target, result: dict, trigger: str, names: list[str] | None, candidate: dict | None) -> str:
    """The dry run as its own finished event (never a `server.maintenance` run); returns its id."""
    what = ", ".join(names) if names else "all enabled tasks"
    description = (f"dry run of {what}: {result['rows_total']} rows, about "
                   f"{space.readable(result['bytes_estimate_total'])} would be removed")
    return events.dispatch(target, events.MAINTENANCE_PREVIEW, status="finished", description=description,
                           summary=result, payload={"trigger": trigger, "tasks": names, "candidate": candidate})
