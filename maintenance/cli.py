"""`python -m maintenance`: run the procedure once, list its tasks, or run the daemon."""

import argparse
import signal
import sys
import threading

from maintenance import registry
from maintenance.runner import Runner
from server.core import config, migrations
from server.core.errors import Parser, UsageError, run_main
from server.core.program import open_database, start


def parse(argv: list[str]) -> argparse.Namespace:
    parser = Parser(prog="python -m maintenance", description="Run the maintenance procedure once, now.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--daemon", action="store_true", help="run it every day at maintenance.time")
    mode.add_argument("--list", action="store_true", help="list the tasks in order with their switch")
    parser.add_argument("--task", action="append", metavar="NAME", help="run only this task (repeatable)")
    args = parser.parse_args(argv)
    if args.task and (args.daemon or args.list):
        raise UsageError("--task applies to a single run, not to --daemon or --list")
    if args.task:
        known = [t.name for t in registry.tasks()]
        for name in args.task:
            if name not in known:
                raise UsageError(f"unknown task {name!r}; known tasks: {', '.join(known)}")
    return args


def _database(settings, log):
    db = open_database(settings, "maintenance")
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
    runner = Runner(settings.postgres_url, lambda line: print(line, flush=True), stop, tty=sys.stdout.isatty())
    outcome = runner.run(names=names, trigger="manual")
    print(outcome.message, flush=True)
    return outcome.exit_code


def _main() -> int:
    args = parse(sys.argv[1:])
    if args.daemon:
        from maintenance.scheduler import MaintenanceDaemon

        MaintenanceDaemon.main()
    settings, log = start("maintenance")
    if args.list:
        return list_tasks(settings, log)
    return run_once(settings, log, args.task)


def main() -> None:
    """Entry point of `python -m maintenance`."""
    run_main(_main)
