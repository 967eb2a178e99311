"""The `postgres` program: the embedded PostgreSQL, for evaluation and `make run`."""

import os
import pwd
import sys
from pathlib import Path

from procs.common import start
from server import embedded_pg
from server.errors import run_main


def main() -> int:
    values, log = start("postgres", spool=False)
    log.warning(
        "embedded PostgreSQL is meant for evaluation only: set AYON_POSTGRES_URL to use a managed PostgreSQL"
    )
    datadir = Path(values.data_dir) / "postgres"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    if embedded_pg.initdb(datadir, say=log.info):
        log.info("initialized a new cluster in %s", datadir)
    user = embedded_pg.run_as()
    argv = embedded_pg.server_command(
        datadir, values.embedded_pg_port,
        ("-c", f"log_line_prefix=%m [{values.instance_id}/postgres] ", "-c", "log_min_messages=warning"),
    )
    log.info("starting PostgreSQL on 127.0.0.1:%d", values.embedded_pg_port)
    sys.stdout.flush()
    if user:
        entry = pwd.getpwnam(user)
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    os.execv(argv[0], argv)
    return 0  # not reached


if __name__ == "__main__":
    run_main(main)
