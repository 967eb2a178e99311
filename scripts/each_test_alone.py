"""Run every test file on its own, a few at a time: a file that passes only after another one fails here.

`python -m scripts.each_test_alone [--jobs N] [FILE ...]` (default: tests/test_*.py, 2 at a time)
prints a line per file as it ends, the output of each failed file, then `N passed, N failed`;
it exits 1 when any failed.
"""

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILE_TIMEOUT = 600  # seconds for one file; pytest.ini limits each test to 300
TAIL_LINES = 60  # of a failed file's output


def run_one(path: Path, logs: Path) -> tuple[bool, float, Path]:
    log = logs / f"{path.stem}.log"
    # Its own temporary folder, removed with the run's, instead of numbered ones in /tmp/pytest-of-USER.
    basetemp = logs / path.stem
    started = time.monotonic()
    with open(log, "wb") as out:
        try:
            code = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                   f"--basetemp={basetemp}", str(path)],
                                  cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=FILE_TIMEOUT).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\nkilled after {FILE_TIMEOUT} s\n".encode())
            code = None
    return code == 0, time.monotonic() - started, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.each_test_alone", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="files run at the same time (default 2)")
    parser.add_argument("files", nargs="*", type=Path, help="test files (default: tests/test_*.py)")
    args = parser.parse_args(argv)
    files = args.files or sorted((ROOT / "tests").glob("test_*.py"))
    failed: list[tuple[Path, Path]] = []
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="each-test-alone-") as folder:

        def one(path: Path) -> None:
            ok, seconds, log = run_one(path, Path(folder))
            with lock:
                print(f"{'pass' if ok else 'FAIL'} {path.relative_to(ROOT) if path.is_absolute() else path} "
                      f"({seconds:.0f} s)", flush=True)
                if not ok:
                    failed.append((path, log))

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(one, files))
        for path, log in sorted(failed):
            lines = log.read_text(errors="replace").splitlines()
            print(f"\n--- {path.name}, run alone: the last {min(len(lines), TAIL_LINES)} lines ---")
            print("\n".join(lines[-TAIL_LINES:]))
    print(f"{len(files) - len(failed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
