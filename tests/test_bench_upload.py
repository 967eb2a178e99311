"""The upload benchmark in a small size, so it cannot rot: every way runs and the report has its lines."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.serial  # it measures an upload's time (make test runs it alone)


def test_bench_upload_small(pg):
    done = subprocess.run([sys.executable, "-m", "bench.upload", "--mb", "2", "--runs", "1"], cwd=ROOT,
                          env={"BENCH_POSTGRES_URL": pg.server_url, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for way in ("store", "ceiling", "bytea literal"):
        assert re.search(rf"^{way} +\d+\.\d{{3}} +\d+$", done.stdout, re.M), done.stdout
    assert re.search(r"^store [\d.]+ s for 2 MiB: target < 0\.02 s (met|MISSED)$", done.stdout, re.M), done.stdout
