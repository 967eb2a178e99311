"""`python -m backup [FILE]`, `python -m backup --restore FILE [--force]` (console script `ayon-backup`).

Exit codes: 0 done; 1 the backup or restore failed (the database, the disk:
the target is as it was); 2 a bad command line or setting, a bad archive, or
a target that is not empty.
"""

import argparse
import sys
from pathlib import Path

from server.core import settings, times
from server.core.errors import Parser, UsageError, run_main


def parse(argv: list[str]) -> argparse.Namespace:
    parser = Parser(prog="python -m backup", description="Back up the database and the installed packages "
                                                         "into one archive, or restore one.")
    parser.add_argument("file", nargs="?", metavar="FILE",
                        help="the archive to write (default: ayon-backup-<UTC time>.tar here), or to read "
                             "with --restore")
    parser.add_argument("--restore", action="store_true",
                        help="restore FILE into an empty database (AYON_POSTGRES_URL) and data folder (AYON_DATA_DIR)")
    parser.add_argument("--force", action="store_true",
                        help="with --restore: replace what the database and the package folders hold")
    args = parser.parse_args(argv)
    if args.restore and not args.file:
        raise UsageError("--restore needs the archive to read: python -m backup --restore FILE")
    if args.force and not args.restore:
        raise UsageError("--force applies to --restore only")
    return args


def default_name() -> str:
    return f"ayon-backup-{times.utc_now().strftime('%Y%m%dT%H%M%SZ')}.tar"


def run(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    values = settings.load()
    url = values.postgres_url  # unset outside an instance: one line, exit 2, at once
    # Imported once the settings are known good: a refusal comes before psycopg2 and tarfile load.
    from backup import dump, restore
    from backup.progress import Progress

    progress = Progress()
    if args.restore:
        restore.restore(url, Path(values.data_dir), Path(args.file), args.force, progress)
    else:
        dump.create(url, Path(values.data_dir), Path(args.file or default_name()), values.instance_id, progress)
    return 0


def main() -> None:
    run_main(run)
