"""Prometheus metrics: HTTP figures kept per worker and summed at scrape time, database figures read at scrape time.

Every label takes its values from a fixed set, so no client can add series:
the HTTP method (the standard ones, else `other`), the route *template*, the
status code, the event topic family (TOPIC_FAMILIES) and status, a maintenance
run's outcome (OUTCOMES) and `when` (before, after), maintenance task names
from the task registry, and the instance ids and program names of
the heartbeats, which the operator's deployment chooses (AYON_INSTANCE_ID).
The instance label is `ayon_instance`: Prometheus sets `instance` on every
series itself (the scraped target) and would rename ours `exported_instance`.

Under gunicorn every worker is a separate process. server/gunicorn_conf.py
points PROMETHEUS_MULTIPROC_DIR at a folder it empties when the master
starts, before any worker imports prometheus_client, so each worker writes its
counters to its own memory-mapped files there and a scrape (served by whichever
worker) adds them all up. Without that variable (tests, one process) the
ordinary in-process registry is used.
"""

import asyncio
import bisect
import collections
import functools
import json
import logging
import math
import os
import shutil
import threading
import time

import psycopg2
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from maintenance.registry import tasks, time_limit
from server.api.spec import Reply, operation
from server.core import config, events
from server.core.db import PROBE_TIMEOUT
from server.core.events import STATUSES

log = logging.getLogger("ayon.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Any other method a client sends (gunicorn accepts any token) is counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Event topics are free text (a webaction's topic is its creator's choice), so events are counted
# by family: the first part of the topics the code dispatches (server.maintenance,
# server.maintenance.request, server.config_changed; action.<name> for webactions), else "other".
TOPIC_FAMILIES = ("server", "action")
OTHER = "other"
INSTANCE_LABEL = "ayon_instance"

REQUESTS = Counter(
    "ayon_http_requests", "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "ayon_http_request_duration_seconds", "Time to answer an HTTP request (to the first byte of a stream).",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# Figures the long-running programs put in their heartbeat (instances.info), by program.
HEARTBEAT_FIGURES = {
    "logcollector": [
        ("lag_seconds", "ayon_logcollector_lag_seconds", "Age of the oldest log record not yet stored.", "gauge"),
        ("spool_bytes", "ayon_logcollector_spool_bytes", "Bytes waiting in the local log spool.", "gauge"),
        ("dropped_total", "ayon_logcollector_dropped", "Log records dropped because the spool was full.", "counter"),
        ("ingested_total", "ayon_logcollector_ingested", "Log records stored in PostgreSQL.", "counter"),
    ],
    "installer": [
        ("queue_depth", "ayon_installer_queue_depth", "Packages waiting to be installed on the instance.", "gauge"),
    ],
}


# How a maintenance run ended, as people and alerts name it (the `outcome` and `status` labels): a run
# stopped by a shutdown (aborted) and one whose process died (marked failed later, its description
# starting "interrupted: ") are both interrupted.
OUTCOMES = ("finished", "failed", "interrupted")

# The latest run of each outcome: one backward walk of the events index by topic and time each. A dry run
# (server.maintenance.preview) is another topic and never counts as a run.
_LATEST_RUNS = """
SELECT o.outcome, extract(epoch FROM r.updated_at), r.summary::text
FROM (VALUES ('finished'), ('failed'), ('interrupted')) AS o (outcome)
CROSS JOIN LATERAL (
    SELECT updated_at, summary FROM events
    WHERE topic = %(topic)s AND status IN ('finished', 'failed', 'aborted')
      AND CASE WHEN status = 'finished' THEN 'finished'
               WHEN status = 'aborted' OR description LIKE 'interrupted: %%' THEN 'interrupted'
               ELSE 'failed' END = o.outcome
    ORDER BY created_at DESC, id DESC
    LIMIT 1
) AS r
"""


class _Pending:
    """Request figures noted in plain memory and added to the registry in batches.

    In multiprocess mode every inc() and observe() takes a lock, asks the OS for
    the pid and writes a memory-mapped file: about a third of a cheap request's
    cost. A request only appends its figures to a queue (a deque: appending and
    taking are atomic, no lock); a background thread counts them and writes
    once per FLUSH_SECONDS per label set, so a scrape from any worker lags by
    at most that long.
    """

    FLUSH_SECONDS = 0.5

    def __init__(self):
        self.lock = threading.Lock()  # one flush at a time (the thread's, a scrape's)
        self.noted: collections.deque = collections.deque()
        self.flusher: threading.Thread | None = None

    def add(self, method: str, route: str, status: int, seconds: float) -> None:
        if self.flusher is None:
            self._start()  # first request in this process (gunicorn forks workers: see _forked)
        self.noted.append((method, route, status, seconds))

    def _forked(self) -> None:
        """In a new child: no flusher runs here yet, and the parent's pending figures are the parent's."""
        self.lock = threading.Lock()
        self.noted, self.flusher = collections.deque(), None

    def _start(self) -> None:
        self.flusher = threading.Thread(target=self._run, name="metrics-flush", daemon=True)
        self.flusher.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # the figures taken are lost; the thread must go on taking them
                log.exception("request metrics could not be written")

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        counts: dict[tuple, int] = {}
        # Per label set: the count in each of LATENCY's buckets (not cumulative), then the sum.
        latencies: dict[tuple, list[float]] = {}
        take, bisect_left, bounds = self.noted.popleft, bisect.bisect_left, _BOUNDS
        # Only what was noted before this flush started: requests keep coming meanwhile.
        for _ in range(len(self.noted)):
            method, route, status, seconds = take()
            key = (method, route, str(status))
            counts[key] = counts.get(key, 0) + 1
            found = latencies.get((method, route))
            if found is None:
                found = latencies[(method, route)] = [0] * len(bounds) + [0.0]
            found[bisect_left(bounds, seconds)] += 1  # the first bucket whose bound is >= seconds, as observe()
            found[-1] += seconds
        for labels, count in counts.items():
            REQUESTS.labels(*labels).inc(count)
        for labels, figures in latencies.items():
            # What observe() would have written, one write per bucket instead of one per request
            # (each takes a lock and writes a memory-mapped file in multiprocess mode).
            histogram = LATENCY.labels(*labels)
            histogram._sum.inc(figures[-1])
            for bucket, count in enumerate(figures[:-1]):
                if count:
                    histogram._buckets[bucket].inc(count)


# LATENCY's upper bounds, +Inf last (prometheus-client adds it).
_BOUNDS = tuple(LATENCY._upper_bounds)
_pending = _Pending()
os.register_at_fork(after_in_child=_pending._forked)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request and record its latency (added to the registry within 0.5 s)."""
    _pending.add(method if method in METHODS else OTHER, route, status, seconds)


def flush() -> None:
    """Add this process's pending request figures now (before a scrape)."""
    _pending.flush()


def prepare_multiprocess_dir(path: str) -> None:
    """Empty the folder at master start: files of a previous run would add stale counts."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def worker_exited(pid: int) -> None:
    """Forget a dead worker's live gauges (its counters stay, so totals never go down)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


class DatabaseCollector:
    """Figures read from PostgreSQL at scrape time, so every worker reports the same values."""

    def __init__(self, db):
        self.db = db

    def describe(self):
        return []  # nothing to check at registration: the figures come from the database

    def collect(self):
        up = GaugeMetricFamily("ayon_metrics_database_up", "1 when the database figures below could be read.")
        if self.db is None:  # PostgreSQL did not answer in time: what the process knows, without them
            up.add_metric([], 0)
            yield up
            return
        try:
            with self.db.transaction() as cur:
                families = list(self._families(cur))
        except psycopg2.Error as exc:
            log.warning("metrics: database figures unavailable: %s", str(exc).strip().splitlines()[:1])
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, cur):
        events = GaugeMetricFamily(
            "ayon_events", "Events in the events table, by topic family (server, action, other) and status.",
            labels=["topic_family", "status"])
        counts = {(family, status): 0 for family in TOPIC_FAMILIES + (OTHER,) for status in STATUSES}
        cases = " ".join("WHEN topic LIKE %s THEN %s" for _ in TOPIC_FAMILIES)
        cur.execute(f"SELECT CASE {cases} ELSE %s END, status, count(*) FROM events GROUP BY 1, 2",
                    [value for family in TOPIC_FAMILIES for value in (family + ".%", family)] + [OTHER])
        for family, status, count in cur.fetchall():
            if (family, status) in counts:
                counts[(family, status)] = count
        for (family, status), count in counts.items():  # every pair, zeros included: a fixed set of series
            events.add_metric([family, status], count)
        yield events
        known = _task_names()
        cfg = config.get(cur)
        yield from self._maintenance(cur, cfg, known)
        yield from self._heartbeats(cur, cfg)

    @staticmethod
    def _maintenance(cur, cfg, known: frozenset[str]):
        """The maintenance switch, whether a run is going on, and the latest run of each outcome.

        Two statements, on the events index by topic and time (a handful of rows:
        one run a day, and old events are removed) and schema_migrations. A
        summary is read as the run left it, and it may be an old run's (without
        the newer keys) or one written around the runner: anything that is not
        the expected JSON number is left out, never a failed scrape.
        """
        cur.execute(
            "SELECT EXISTS (SELECT 1 FROM events WHERE topic = %s AND status = 'in_progress'), "
            "(SELECT extract(epoch FROM min(applied_at)) FROM schema_migrations)",
            (events.MAINTENANCE,),
        )
        in_progress, set_up = cur.fetchone()
        cur.execute(_LATEST_RUNS, {"topic": events.MAINTENANCE})
        runs = {outcome: (float(ended), _summary(text)) for outcome, ended, text in cur.fetchall()}

        def gauge(name, help_text, labels=()):
            return GaugeMetricFamily(name, help_text, labels=list(labels))

        enabled = gauge("ayon_maintenance_enabled", "1 when the daemon runs the procedure on schedule "
                                                    "(maintenance.enabled).")
        enabled.add_metric([], 1 if cfg.maintenance.enabled else 0)
        running = gauge("ayon_maintenance_in_progress", "1 while a maintenance run is in progress.")
        running.add_metric([], 1 if in_progress else 0)
        setup = gauge("ayon_database_setup_timestamp_seconds",
                      "When setup first migrated the database (Unix time): where the maintenance schedule "
                      "counts from before any run has finished.")
        if set_up is not None:
            setup.add_metric([], float(set_up))
        ended = gauge("ayon_maintenance_last_run_timestamp_seconds",
                      "When the latest maintenance run of each outcome ended (Unix time); a run stopped by a "
                      "shutdown or whose process died is interrupted.", ["outcome"])
        for outcome, (at, _) in runs.items():
            ended.add_metric([outcome], at)
        latest = max(runs, key=lambda outcome: runs[outcome][0], default=None)
        status = gauge("ayon_maintenance_last_run_status",
                       "1 for the outcome of the latest maintenance run that ended, 0 for the others "
                       "(all 0 before the first run).", ["status"])
        for outcome in OUTCOMES:
            status.add_metric([outcome], 1 if outcome == latest else 0)

        # The names of the figures before this step, kept: the latest run that finished.
        success = gauge("ayon_maintenance_last_success_timestamp_seconds",
                        "When the latest maintenance run that finished ended (Unix time).")
        duration = gauge("ayon_maintenance_last_duration_seconds",
                         "How long the latest maintenance run that finished took.")
        if "finished" in runs:
            at, summary = runs["finished"]
            success.add_metric([], at)
            if (seconds := _number(summary.get("duration_s"))) is not None:
                duration.add_metric([], seconds)

        summary = runs[latest][1] if latest else {}
        database = gauge("ayon_maintenance_database_bytes",
                         "Size of the database before and after the latest maintenance run that ended.", ["when"])
        for when in ("before", "after"):
            if (size := _number(summary.get(f"db_bytes_{when}"))) is not None:
                database.add_metric([when], size)
        per_task = {
            "duration": gauge("ayon_maintenance_task_duration_seconds",
                              "How long each task of the latest maintenance run that ended took.", ["task"]),
            "rows": gauge("ayon_maintenance_task_rows",
                          "Rows each task of the latest maintenance run that ended removed.", ["task"]),
            "bytes": gauge("ayon_maintenance_task_bytes",
                           "Size of the tables each task of the latest maintenance run that ended touched, "
                           "before and after it.", ["task", "when"]),
            "reclaimed": gauge("ayon_maintenance_task_bytes_reclaimed",
                               "Bytes each task of the latest maintenance run that ended gave back: its tables' size "
                               "before minus after (negative when they grew meanwhile).", ["task"]),
            "timed_out": gauge("ayon_maintenance_task_timed_out",
                               "1 when the task reached its time limit in the latest maintenance run that ended.",
                               ["task"]),
        }
        for name, task in _tasks(summary.get("tasks"), known).items():
            if (seconds := _number(task.get("duration_s"))) is not None:
                per_task["duration"].add_metric([name], seconds)
            if (rows := _number(task.get("rows"))) is not None:
                per_task["rows"].add_metric([name], rows)
            before, after = _number(task.get("bytes_before")), _number(task.get("bytes_after"))
            for when, size in (("before", before), ("after", after)):
                if size is not None:
                    per_task["bytes"].add_metric([name, when], size)
            if before is not None and after is not None:
                per_task["reclaimed"].add_metric([name], before - after)
            if isinstance(task.get("timed_out"), bool):
                per_task["timed_out"].add_metric([name], 1 if task["timed_out"] else 0)
        limits = gauge("ayon_maintenance_task_time_limit_seconds",
                       "Each task's time limit now: its maintenance.tasks.<task>.max_minutes, else "
                       "maintenance.max_minutes.", ["task"])
        for name in sorted(known):
            limits.add_metric([name], time_limit(cfg, name))
        yield from (enabled, running, setup, ended, status, success, duration, database, *per_task.values(), limits)

    @staticmethod
    def _heartbeats(cur, cfg):
        cur.execute("SELECT instance_id, program, extract(epoch FROM last_seen), info FROM instances")
        rows = cur.fetchall()
        seen = GaugeMetricFamily("ayon_instance_last_seen_timestamp_seconds",
                                 "Last heartbeat of each program of each instance (Unix time).",
                                 labels=[INSTANCE_LABEL, "program"])
        families = {}
        for program, figures in HEARTBEAT_FIGURES.items():
            for key, name, help_text, kind in figures:
                family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                    name, help_text, labels=[INSTANCE_LABEL])
                families[(program, key)] = family
        for instance, program, last_seen, info in rows:
            seen.add_metric([instance, program], float(last_seen))
            info = info if isinstance(info, dict) else {}
            for key, *_ in HEARTBEAT_FIGURES.get(program, []):
                value = info.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    families[(program, key)].add_metric([instance], float(value))
        stale = GaugeMetricFamily("ayon_instances_stale_after_seconds",
                                  "Seconds without a heartbeat after which a program shows stale "
                                  "(instances.stale_after).")
        stale.add_metric([], float(cfg.instances.stale_after))
        yield seen
        yield stale
        yield from families.values()


def _number(value) -> float | None:
    """A JSON number of a summary as a float; None for text, booleans, null, and what no float holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return number if math.isfinite(number) else None


def _summary(text: str | None) -> dict:
    """A run's summary from its JSON text; empty when it is no object (or too deep or large to read)."""
    try:
        # Integers as floats: one of thousands of digits becomes inf (left out) instead of refusing the text.
        value = json.loads(text, parse_int=float) if text else {}
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _tasks(listed, known: frozenset[str]) -> dict[str, dict]:
    """A summary's task entries by name: registered names only, the first entry of a name repeated."""
    found: dict[str, dict] = {}
    for task in listed if isinstance(listed, list) else ():
        name = task.get("name") if isinstance(task, dict) else None
        if isinstance(name, str) and name in known and name not in found:
            found[name] = task
    return found


@functools.cache
def _task_names() -> frozenset[str]:
    """The registered maintenance tasks: the only values of the task label."""
    return frozenset(task.name for task in tasks())


def scrape(db) -> bytes:
    """The text exposition of every metric: all workers' HTTP figures plus the database figures (none with None)."""
    flush()
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    registry.register(DatabaseCollector(db))
    return generate_latest(registry)


class _Forward:
    """The process's own registry inside a per-scrape registry."""

    def __init__(self, source):
        self.source = source

    def collect(self):
        return self.source.collect()


class Metrics:
    public = True  # scraped without credentials; counts only, every label from a fixed set

    def __init__(self, ctx):
        self.ctx = ctx

    # Scrapers may add parameters of their own: not strict.
    @operation("Prometheus metrics", tags=["metrics"], strict=False,
               description="Requests by method, route template and status and their latency (summed over every "
                           "worker), events by topic family and status, the latest maintenance run, log collector "
                           "and installer figures by instance (label ayon_instance).",
               responses={200: Reply("Prometheus text exposition format", {"type": "string"}, "text/plain")})
    async def on_get(self, req, resp):
        # The database figures within PROBE_TIMEOUT: a hung PostgreSQL leaves the process's own figures to say so.
        try:
            resp.data = await asyncio.wait_for(self.ctx.probe(scrape, self.ctx.db.bounded(PROBE_TIMEOUT)),
                                               PROBE_TIMEOUT + 0.3)
        except TimeoutError:
            resp.data = scrape(None)
        resp.content_type = CONTENT_TYPE_LATEST
