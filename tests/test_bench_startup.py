"""The startup benchmark once, so it cannot rot: both starts are measured and the report has its lines."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.serial  # it measures the start and the memory (make test runs it alone)


def test_bench_startup_once():
    done = subprocess.run([sys.executable, "-m", "bench.startup", "--runs", "1"], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"^run 1/1: ours ready in [\d.]+ s, \d+ MiB RSS; ceiling [\d.]+ s, \d+ MiB RSS$", out, re.M), out
    for figure in ("start to /health/ready = 200 \\(s\\)", "RSS of the process tree \\(MiB\\)",
                   "PSS of the process tree \\(MiB\\)"):
        assert re.search(rf"^{figure} +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M), out
    # Every program of the tree is in the per-process list.
    for program in ("gunicorn: master", "gunicorn: worker", "supervision.supervisord", "procs.logcollector",
                    "procs.installer", "procs.webactions", "maintenance --daemon", "supervision.console"):
        assert program in out, out
    assert re.search(r"^ready in [\d.]+ s: target <= 0.5 s (met|MISSED)$", out, re.M), out
    assert re.search(r"^PSS \d+ MiB: target <= 120 MiB (met|MISSED)$", out, re.M), out
