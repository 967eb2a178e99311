"""The setup process: wait for PostgreSQL, create the database, migrate, seed the configuration.

`--contract` is the contract step of a rolling upgrade: setup, and then the contract migrations,
once no instance of an older release beats in the heartbeat table.
"""

import sys
import time

import psycopg2

from server.core import auth, config, db, embedded_pg, heartbeat, layout, migrations, retry
from server.core.errors import AyonError, Parser, first_line, run_main
from server.core.program import open_database, start

EXIT_OLDER_RUNNING = 3  # the contract step refused: an older release still runs; run it again later


class OlderRelease(AyonError):
    """Instances of an older release still beat: the contract step must wait for them to stop."""

    exit_code = EXIT_OLDER_RUNNING


def parse_args(argv: list[str]):
    parser = Parser(prog="python -m procs.setup", description="Create the database, migrate, seed the "
                    "configuration (expand migrations; it stops before the first contract migration).")
    parser.add_argument("--contract", action="store_true",
                        help="also apply the contract migrations: refused (exit 3) while an instance of an "
                             "older release still beats in the heartbeat table")
    parser.add_argument("--wait", type=int, metavar="SECONDS", default=0,
                        help="with --contract: wait up to SECONDS for the older instances to stop, instead "
                             "of refusing at once")
    args = parser.parse_args(argv)
    if args.wait and not args.contract:
        parser.error("--wait goes with --contract")
    if not 0 <= args.wait <= 86400:
        parser.error(f"--wait {args.wait}: expected 0 to 86400 seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    values, log = start("setup")
    error = layout.error_file(values.data_dir, "setup")
    if not args.contract:  # the step run beside an instance leaves its setup's record alone
        error.unlink(missing_ok=True)
    try:
        return run(values, log, contract=args.contract, wait=args.wait)
    except AyonError as exc:
        # Under supervisord, the watchdog repeats this as the instance's last line.
        if error.parent.is_dir() and not args.contract:
            error.write_text(str(exc))
        raise


def wait_for_older(database, wait: float, log) -> None:
    """Return once no instance of an older release beats; refuse (OlderRelease) at once, or after `wait` s."""
    schema = migrations.code_schema()

    def older() -> None:
        with database.transaction() as cur:
            found = heartbeat.older_instances(cur, schema, config.get(cur).instances.stale_after)
        if found:
            raise retry.NotYet(f"{len(found)} instance(s) of an older release still run: {'; '.join(found)}")

    try:
        retry.Retry("the instances of older releases to stop", first=1, factor=1, jitter=0, timeout=wait,
                    say=log.info, say_every=10).call(older, retry_on=db.BROKEN)
    except retry.GaveUp as exc:
        waited = f" after {wait} s" if wait else ""
        raise OlderRelease(f"contract migrations refused{waited}: {exc.reason}; stop them (finish the rollout) "
                           f"and run `{migrations.CONTRACT_COMMAND}` again") from None


def wait_for_embedded(values, log) -> None:
    """Until the postgres program's server says it is ready (its postmaster.pid), without connecting."""
    def ready() -> None:
        if not embedded_pg.accepting(values.data_dir):
            raise retry.NotYet("not started yet")

    try:
        retry.Retry("the embedded PostgreSQL to start", first=0.2, factor=1, jitter=0,
                    timeout=values.db_wait_timeout, say=log.info, say_every=10).call(ready)
    except retry.GaveUp as exc:
        raise AyonError(f"the embedded PostgreSQL did not start within {values.db_wait_timeout} s ({exc.reason}): "
                        "see the postgres program's lines") from None


def prepare_embedded(values, log) -> None:
    """The embedded PostgreSQL: as its superuser, the owner role the programs use and its database."""
    superuser = embedded_pg.url(values.data_dir, values.embedded_pg_port, embedded_pg.SUPERUSER, "postgres")
    wait_for_embedded(values, log)
    db.wait_for_postgres(superuser, values.db_wait_timeout, log.info)
    try:
        changes = embedded_pg.ensure_owner(superuser, values.data_dir)
    except psycopg2.Error as exc:
        raise AyonError(f"embedded PostgreSQL: {first_line(exc)}") from None
    for change in changes:
        log.info("%s", change)


def run(values, log, contract: bool = False, wait: float = 0) -> int:
    started = time.monotonic()
    # The file is checked before anything touches the database: a bad file changes nothing.
    file_doc = config.load_file(values.config_file) if values.config_file else None
    url = values.postgres_url
    if values.embedded_postgres:
        prepare_embedded(values, log)
    else:
        db.wait_for_postgres(url, values.db_wait_timeout, log.info)
        if db.create_database_if_missing(url):
            log.info("created database %s", db.database_name(url))
    lock_timeout = values.migration_lock_timeout
    applied = migrations.migrate(url, log.info, lock_timeout=lock_timeout, session_url=values.session_url)
    database = open_database(values, "setup")
    if contract:
        wait_for_older(database, wait, log)
        applied += migrations.migrate(url, log.info, contract=True, lock_timeout=lock_timeout,
                                      session_url=values.session_url)
    with database.transaction() as cur:
        if config.seed(cur):
            log.info("seeded the server configuration with its defaults")
        if file_doc:
            _, changes = config.update(cur, file_doc, who="setup (AYON_CONFIG_FILE)")
            if changes:
                log.info("applied %s: %s", values.config_file, ", ".join(sorted(changes)))
        token = auth.generate_if_unset(cur, values.admin_token)
    if token:
        # Printed once, straight to the terminal: the database keeps only its hash.
        print(f"Generated admin token (shown once, keep it): {token}", flush=True)
    status = migrations.status(database)
    log.info(
        "setup done in %.2f s: schema version %d%s",
        time.monotonic() - started,
        status.version,
        f", {applied} migration(s) applied" if applied else ", nothing to migrate",
    )
    return 0


def cli() -> None:
    """Entry point of `python -m procs.setup` and `ayon-setup`."""
    run_main(main)


if __name__ == "__main__":
    cli()
