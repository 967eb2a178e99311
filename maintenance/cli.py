"""`python -m maintenance`: run the procedure once, preview it, list its tasks, or run the daemon.

A one-shot run or dry run delivers its log records to PostgreSQL before it
exits (server/core/collector.py `deliver_now`, the log collector's engine), so cron and CronJob runs are in
`/api/logs` like the daemon's.
"""

import argparse
import signal
import sys
import threading

from maintenance import preview, registry, space
from maintenance.runner import Runner
from server.core import config, migrations
from server.core.collector import deliver_now
from server.core.db import BROKEN
from server.core.errors import DatabaseUnavailable, Parser, UsageError, first_line, run_main
from server.core.program import open_database, start


def parse(argv: list[str]) -> argparse.Namespace:
    parser = Parser(prog="python -m maintenance", description="Run the maintenance procedure once, now.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--daemon", action="store_true", help="run it every day at maintenance.time")
    mode.add_argument("--list", action="store_true", help="list the tasks in order with their switch")
    mode.add_argument("--dry-run", action="store_true",
                      help="count what each enabled task would remove now, change nothing")
    parser.add_argument("--task", action="append", metavar="NAME", help="run only this task (repeatable)")
    args = parser.parse_args(argv)
    if args.task and (args.daemon or args.list):
        raise UsageError("--task applies to a single run or dry run, not to --daemon or --list")
    if args.task:
        known = [t.name for t in registry.tasks()]
        for name in args.task:
            if name not in known:
                raise UsageError(f"unknown task {name!r}; known tasks: {', '.join(known)}")
    return args


def _database(settings, log):
    db = open_database(settings, "maintenance", limits=None)  # a dry run bounds its statements itself
    migrations.wait_until_current(db, settings.db_wait_timeout, log.info)
    return db


def list_tasks(settings, log) -> int:
    db = _database(settings, log)
    with db.transaction() as cur:
        doc = config.get(cur)
    for number, (task, enabled, options) in enumerate(registry.plan(doc), 1):
        print(f"{number:>2}. {task.name:<24} {'on' if enabled else 'off':<4} {task.describe(options)}")
    db.close()
    return 0


def run_once(settings, log, names: list[str] | None) -> int:
    stop = threading.Event()

    def on_signal(signum, frame):  # only record it: the runner stops the task at its next safe point
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    _database(settings, log).close()
    run = Runner(settings.postgres_url, log.info, stop, tty=sys.stdout.isatty(), instance=settings.instance_id,
                 fail=log.error)
    try:
        outcome = run.run(names=names, trigger="manual")
    except BROKEN as exc:
        # The database went away mid-run (a failover, a restart): one line, not a traceback. The run's
        # event stays in_progress; the next run marks it interrupted ("marked the interrupted run ... failed").
        raise DatabaseUnavailable(f"the database connection was lost during the run ({first_line(exc)}); "
                                  "run it again once PostgreSQL answers: the next run records this one as "
                                  "interrupted") from None
    (log.info if outcome.exit_code == 0 else log.error)("%s", outcome.message)
    log.info("logs: %s", deliver_now(settings, log))
    return outcome.exit_code


def dry_run(settings, log, names: list[str] | None) -> int:
    db = _database(settings, log)
    try:
        with db.transaction() as cur:
            cfg = config.get(cur)
        result = preview.count(db, cfg, names)
        event_id = preview.record(db, result, "dry-run", names, None)
    finally:
        db.close()
    for task in result["tasks"]:
        if not task["enabled"]:
            what = "off"
        elif task["error"]:
            what = f"could not count: {task['error']}"
        else:
            what = f"{task['rows']:>10} rows  ~{space.readable(task['bytes_estimate'])}"
        log.info("%-24s %s", task["name"], what)
    log.info("dry run: %d rows, about %s would be removed; nothing was changed (event %s)",
             result["rows_total"], space.readable(result["bytes_estimate_total"]), event_id)
    log.info("logs: %s", deliver_now(settings, log))
    return 1 if any(task["error"] for task in result["tasks"]) else 0


def _main() -> int:
    args = parse(sys.argv[1:])
    if args.daemon:
        from maintenance.scheduler import MaintenanceDaemon

        MaintenanceDaemon.main()
    settings, log = start("maintenance")
    if args.list:
        return list_tasks(settings, log)
    if args.dry_run:
        return dry_run(settings, log, args.task)
    return run_once(settings, log, args.task)


def main() -> None:
    """Entry point of `python -m maintenance`."""
    run_main(_main)
