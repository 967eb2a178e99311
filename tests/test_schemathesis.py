"""A schemathesis run against /api/openapi.json served by a real gunicorn: no server error, nothing off the schema."""

import subprocess
import sys

from tests.apiclient import TOKEN, gunicorn  # noqa: F401  (fixture)
from tests.conftest import ROOT

# Endless (the event stream) or reaching out to other hosts (install from a URL): not for a fuzzer.
EXCLUDED = ["/api/events/stream", "/api/addons/install-from-url"]


def test_schemathesis_finds_nothing(gunicorn, tmp_path):
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{gunicorn.url}/api/openapi.json",
        "--header", f"Authorization: Bearer {TOKEN}",
        "--checks", "all", "--exclude-checks", "use_after_free,ensure_resource_availability,positive_data_acceptance",
        # One worker: two threads have crashed CPython 3.11's ast module inside schemathesis.
        "--max-examples", "20", "--seed", "20261127", "--workers", "1", "--request-timeout", "10",
        "--report", "junit", "--report-dir", str(tmp_path / "report"),
        *[arg for path in EXCLUDED for arg in ("--exclude-path", path)],
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = result.stdout
    # The failures section first: it names each operation, the check and a curl line to reproduce it.
    shown = report[report.find("FAILURES"):] if "FAILURES" in report else report[-12000:]
    assert result.returncode == 0, shown[:20000] + result.stderr[-3000:]
    assert "Tested:" in report and "Failures:" not in report, report[-3000:]
