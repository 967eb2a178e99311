"""`make test`: every test file in a pytest of its own, so a file that passes only after another one fails.

`python -m scripts.each_test_alone [--jobs N] [FILE ...]` (default: tests/test_*.py, 2 at a time)
starts one PostgreSQL for the whole run (unless AYON_TEST_POSTGRES_URL names one: each session
clones its own template there), runs the files, prints a line per file as it ends, then the
output of each failed file and the closing count of tests: `N passed, N failed, N skipped`.
A file that measures time or memory (`pytestmark = pytest.mark.serial`) runs with nothing
beside it, and one that stops the suite's PostgreSQL gets its own. Extra pytest arguments go in
PYTEST_ARGS. Exits 1 when any file failed.
"""

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILE_TIMEOUT = 900  # seconds for one file; pytest.ini limits each test to 300
TAIL_LINES = 80  # of a failed file's output
SERIAL = re.compile(r"^pytestmark\s*=.*pytest\.mark\.serial", re.M)
# A file that stops and starts the suite's PostgreSQL gets one of its own (and runs alone).
OWN_POSTGRES = re.compile(r"pg\.embedded\.(stop|start)\(")
# pytest's summary line: "3 failed, 120 passed, 2 skipped, 1 xfailed in 12.34s"
COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


def counts(output: str) -> dict[str, int]:
    """The figures of pytest's last summary line in `output`."""
    for line in reversed(output.splitlines()):
        if re.search(r"\bin [\d.]+s\b", line) and COUNT.search(line):
            found = {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
                     for n, kind in COUNT.findall(line)}
            return found
    return {}


def run_one(path: Path, logs: Path, env: dict, extra: list[str]) -> tuple[bool, float, Path, dict]:
    log = logs / f"{path.stem}.log"
    if OWN_POSTGRES.search(path.read_text(errors="replace")):
        env = {k: v for k, v in env.items() if k != "AYON_TEST_POSTGRES_URL" or k in os.environ}
    # Its own, short (a supervisord socket path under it must stay within AF_UNIX's 108 bytes).
    basetemp = Path(tempfile.mkdtemp(prefix="t", dir=logs.parent if len(str(logs)) < 40 else "/tmp")) / "t"
    started = time.monotonic()
    with open(log, "wb") as out:
        try:
            code = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   f"--basetemp={basetemp}", *extra, str(path)],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=FILE_TIMEOUT).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\nkilled after {FILE_TIMEOUT} s\n".encode())
            code = None
    shutil.rmtree(basetemp.parent, ignore_errors=True)
    found = counts(log.read_text(errors="replace"))
    if code not in (0, 5) and not found.get("failed") and not found.get("error"):
        found["error"] = found.get("error", 0) + 1  # it ended before its summary: count the file
    return code in (0, 5), time.monotonic() - started, log, found


def shared_postgres(folder: Path):
    """One embedded PostgreSQL for every file of the run; None when the caller gave one."""
    if os.environ.get("AYON_TEST_POSTGRES_URL", "").strip():
        return None
    sys.path.insert(0, str(ROOT))
    from tests.pg import EmbeddedPostgres, free_port

    root = folder / "postgres"
    root.mkdir()
    os.chmod(folder, 0o755)
    os.chmod(root, 0o755)
    server = EmbeddedPostgres(root / "data", free_port())
    server.start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.each_test_alone", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="files run at the same time (default 2)")
    parser.add_argument("files", nargs="*", type=Path, help="test files (default: tests/test_*.py)")
    args = parser.parse_args(argv)
    files = [f.resolve() for f in args.files] or sorted((ROOT / "tests").glob("test_*.py"))
    serial = [f for f in files if SERIAL.search(text := f.read_text(errors="replace")) or OWN_POSTGRES.search(text)]
    side_by_side = [f for f in files if f not in serial]
    extra = shlex.split(os.environ.get("PYTEST_ARGS", ""))
    failed: list[tuple[Path, Path]] = []
    totals: dict[str, int] = {}
    lock = threading.Lock()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ayon-tests-") as name:
        folder = Path(name)
        print(f"make test: {len(files)} files, {len(side_by_side)} of them {max(1, args.jobs)} at a time, "
              f"then {len(serial)} alone", flush=True)
        postgres = shared_postgres(folder)
        env = dict(os.environ)
        if postgres is not None:
            env["AYON_TEST_POSTGRES_URL"] = postgres.url
        done = 0

        def one(path: Path) -> None:
            nonlocal done
            ok, seconds, log, found = run_one(path, folder, env, extra)
            with lock:
                done += 1
                for kind, n in found.items():
                    totals[kind] = totals.get(kind, 0) + n
                figures = ", ".join(f"{n} {kind}" for kind, n in found.items()) or "no tests"
                print(f"[{done}/{len(files)}] {'pass' if ok else 'FAIL'} {path.relative_to(ROOT)} "
                      f"({figures}; {seconds:.0f} s)", flush=True)
                if not ok:
                    failed.append((path, log))

        try:
            with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
                list(pool.map(one, side_by_side))
            for path in serial:
                one(path)
        finally:
            if postgres is not None:
                postgres.stop()
        for path, log in sorted(failed):
            lines = log.read_text(errors="replace").splitlines()
            print(f"\n--- {path.relative_to(ROOT)}: the last {min(len(lines), TAIL_LINES)} lines ---")
            print("\n".join(lines[-TAIL_LINES:]))
    failures = totals.get("failed", 0) + totals.get("error", 0)
    print(f"\n{len(files) - len(failed)} of {len(files)} files passed in {time.monotonic() - started:.0f} s")
    print(f"{totals.get('passed', 0)} passed, {failures} failed, {totals.get('skipped', 0)} skipped", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
