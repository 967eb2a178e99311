"""The setup process: wait for PostgreSQL, create the database, migrate, seed the configuration."""

import time

import psycopg2

from server.core import auth, config, db, embedded_pg, layout, migrations, retry
from server.core.errors import AyonError, first_line, run_main
from server.core.program import open_database, start


def main() -> int:
    values, log = start("setup")
    error = layout.error_file(values.data_dir, "setup")
    error.unlink(missing_ok=True)
    try:
        return run(values, log)
    except AyonError as exc:
        # Under supervisord, the watchdog repeats this as the instance's last line.
        if error.parent.is_dir():
            error.write_text(str(exc))
        raise


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


def run(values, log) -> int:
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
    applied = migrations.migrate(url, log.info)
    database = open_database(values, "setup")
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
