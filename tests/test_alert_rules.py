"""The Prometheus alerting rules (deploy/prometheus): promtool checks and unit tests, and no drift from /metrics.

promtool comes with Debian's `prometheus` package (.ci/run installs it); where it
is missing the promtool tests skip saying so. The drift test needs no promtool:
every metric a rule expression reads, with the label values its selectors ask
for, must be in a real scrape of /metrics from a real gunicorn after a real run.
"""

import re
import shutil
import subprocess
import sys

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from server.core import heartbeat
from tests.apiclient import gunicorn, http  # noqa: F401  (fixtures)
from tests.conftest import ROOT

RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "ayon-alerts.yml"
RULE_TESTS = RULES_DIR / "ayon-alerts.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package prometheus; .ci/run installs it)")


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def promtool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=120)


@needs_promtool
def test_promtool_checks_the_rules():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing():
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    for rule in rules():
        assert cases.get(rule["alert"]) == {True, False}, f"{rule['alert']}: needs a firing and a quiet case"


def test_every_alert_says_how_bad_for_how_long_and_what_to_do():
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 100, rule["alert"]


# --- which metrics the expressions read ---

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "inf", "nan", "atan2"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTOR = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")')


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """The metric selectors of a PromQL expression: (metric name, [(label, operator, value)]).

    Label names in grouping clauses, function and aggregation names, keywords,
    numbers, durations and strings are not metrics. Enough PromQL for rules
    written as these are; test_selectors_reads_promql pins what it must tell apart.
    """
    # Strings, grouping lists and durations are blanked to the same length, so a position in `blank`
    # is the same in `expr`, where the matchers' values are read.
    def spaces(match):
        return " " * len(match.group())

    blank = _STRING.sub(lambda m: "\0" * len(m.group()), expr)
    blank = re.sub(r"\[[^\]]*\]", spaces, _GROUPING.sub(spaces, blank))
    found = []
    for match in _SELECTOR.finditer(blank):
        name = match.group(1)
        if name in KEYWORDS or not match.group(2) and re.match(r"\s*\(", blank[match.end(1):]):
            continue  # a keyword, or a function or aggregation (a name before "(")
        braces = expr[match.start(2):match.end(2)] if match.group(2) else ""
        found.append((name, [(label, op, value[1:-1]) for label, op, value in _MATCHER.findall(braces)]))
    return found


def test_selectors_reads_promql():
    expr = ('max by (job, ayon_instance) (increase(a_total{x="by(y) z_total",w=~"p|q"}[15m])) > 26 * 3600 '
            'and on (job) group_left b_seconds or sum without (task) (c) unless absent(d{k!="v"}) '
            '> bool 1e3 and label_replace(e, "dst", "$1", "src", "(.*)") offset 5m')
    assert selectors(expr) == [("a_total", [("x", "=", "by(y) z_total"), ("w", "=~", "p|q")]),
                               ("b_seconds", []), ("c", []), ("d", [("k", "!=", "v")]), ("e", [])]


def test_every_rule_reads_a_metric():
    for rule in rules():
        assert selectors(rule["expr"]), rule["alert"]


def seed(env, database):
    """A real run of the procedure, and a log collector's heartbeat as the collector sends it."""
    result = subprocess.run([sys.executable, "-m", "maintenance"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    heartbeat.beat(database, "test", "logcollector", {"lag_seconds": 0.1, "spool_bytes": 0, "dropped_total": 2,
                                                      "ingested_total": 10})


def test_every_metric_the_rules_read_is_in_a_real_scrape(env, database, gunicorn):
    seed(env, database)
    status, body, _ = http(gunicorn.url + "/metrics")
    assert status == 200
    exposed: dict[str, list[dict]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            exposed.setdefault(sample.name, []).append(sample.labels)
    for rule in rules():
        for name, matchers in selectors(rule["expr"]):
            assert name in exposed, f"{rule['alert']} reads {name}, which /metrics does not expose"
            for label, op, value in matchers:
                if op == "=":
                    assert any(labels.get(label) == value for labels in exposed[name]), \
                        f"{rule['alert']}: no {name} with {label}={value!r}"
                elif op == "=~":
                    assert any(re.fullmatch(value, labels.get(label, "")) for labels in exposed[name]), \
                        f"{rule['alert']}: no {name} with {label} matching {value!r}"
