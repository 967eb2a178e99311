"""The HTTP benchmark harness in smoke mode (1 s per case), so it cannot rot."""

import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is missing (Debian: apt-get install wrk)")
def test_bench_http_smoke(pg):
    done = subprocess.run([sys.executable, "-m", "bench.http", "--smoke", "--postgres-url", pg.server_url],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = re.findall(r"^\| (ayon|falcon-ceiling|fastapi-uvicorn) \| (info|events) \| ([\d,]+) \|", done.stdout, re.M)
    assert {(stack, endpoint) for stack, endpoint, _ in rows} == {
        (stack, endpoint) for stack in ("ayon", "falcon-ceiling", "fastapi-uvicorn") for endpoint in ("info", "events")
    }, done.stdout
    assert all(int(rps.replace(",", "")) > 0 for _, _, rps in rows), done.stdout
    assert re.search(r"^- info: ayon / falcon-ceiling = [\d.]+ \(target >= 0.7\)", done.stdout, re.M), done.stdout
