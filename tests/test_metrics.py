"""GET /metrics: counts from two real gunicorn workers add up; database figures are read at scrape time."""

import json
import math
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server import metrics
from server.core import events
from tests.apiclient import client, gunicorn, http, wait_for  # noqa: F401  (fixtures)


def samples(text: str) -> dict:
    """{(sample name, sorted labels): value}"""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def request_count(figures: dict, route: str, status: str = "200") -> float:
    return sum(v for (name, labels), v in figures.items()
               if name == "ayon_http_requests_total" and dict(labels).get("route") == route
               and dict(labels).get("status") == status)


def scrape(url: str) -> dict:
    status, body, headers = http(url + "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain")
    return samples(body.decode())


def test_counts_add_up_across_two_workers(gunicorn):
    pids: set[int] = set()
    sent = 0

    def info(_):
        status, body, _ = http(gunicorn.url + "/api/info")
        assert status == 200
        return json.loads(body)["pid"]

    # New connections, several at a time, until both workers have answered.
    with ThreadPoolExecutor(8) as pool:
        def spread():
            nonlocal sent
            pids.update(pool.map(info, range(16)))
            sent += 16
            return len(pids) == 2

        wait_for(spread, 30, "both workers to answer /api/info")
    # Workers add their figures within half a second; then, whichever worker serves the scrape, the sum is the same.
    wait_for(lambda: request_count(scrape(gunicorn.url), "/api/info") == sent, 10, "every worker's counts")
    for _ in range(3):
        figures = scrape(gunicorn.url)
        assert request_count(figures, "/api/info") == sent
    assert sum(v for (name, labels), v in figures.items()
               if name == "ayon_http_request_duration_seconds_count" and dict(labels)["route"] == "/api/info") == sent
    assert request_count(figures, "/metrics") >= 2
    unmatched = http(gunicorn.url + "/no/such/path")[0]
    assert unmatched == 404
    wait_for(lambda: request_count(scrape(gunicorn.url), "(unmatched)", "404") == 1, 10, "the unmatched request counted")

    # A worker that dies takes none of the counts with it.
    os.kill(pids.pop(), signal.SIGKILL)
    wait_for(lambda: request_count(scrape(gunicorn.url), "/api/info") == sent, 20,
             "the counts to survive a worker's death")


def test_database_figures(client, database):
    events.dispatch(database, "test.thing", status="failed")
    events.dispatch(database, "test.thing", status="failed")
    events.dispatch(database, "server.maintenance", status="finished", summary={
        "duration_s": 12.5, "tasks": [{"name": "vacuum", "status": "finished", "duration_s": 2.25, "rows": 0},
                                      {"name": "not-a-task", "status": "finished", "duration_s": 1}]})
    database.execute(
        "INSERT INTO instances (instance_id, program, info) VALUES "
        "('i1', 'logcollector', '{\"lag_seconds\": 0.75, \"spool_bytes\": 4096, \"dropped_total\": 3, "
        "\"ingested_total\": 1000}'), ('i1', 'installer', '{\"queue_depth\": 4}'), ('i1', 'server', '{}')"
    )
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    figures = samples(result.text)
    assert figures[("ayon_metrics_database_up", ())] == 1
    assert figures[("ayon_events", (("status", "failed"), ("topic_family", "other")))] == 2
    assert figures[("ayon_events", (("status", "finished"), ("topic_family", "server")))] == 1
    assert figures[("ayon_events", (("status", "aborted"), ("topic_family", "action")))] == 0
    assert figures[("ayon_maintenance_last_duration_seconds", ())] == 12.5
    assert figures[("ayon_maintenance_task_duration_seconds", (("task", "vacuum"),))] == 2.25
    assert not [key for key in figures if ("task", "not-a-task") in key[1]]  # only registered task names
    assert figures[("ayon_maintenance_last_success_timestamp_seconds", ())] > 1.7e9
    assert figures[("ayon_logcollector_lag_seconds", (("ayon_instance", "i1"),))] == 0.75
    assert figures[("ayon_logcollector_spool_bytes", (("ayon_instance", "i1"),))] == 4096
    assert figures[("ayon_logcollector_dropped_total", (("ayon_instance", "i1"),))] == 3
    assert figures[("ayon_logcollector_ingested_total", (("ayon_instance", "i1"),))] == 1000
    assert figures[("ayon_installer_queue_depth", (("ayon_instance", "i1"),))] == 4
    assert ("ayon_instance_last_seen_timestamp_seconds", (("ayon_instance", "i1"), ("program", "server"))) in figures
    # Prometheus sets `instance` itself (the scraped target); a label of ours by that name would be renamed.
    assert not [key for key in figures if "instance" in dict(key[1])]


def series(client) -> set:
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    return {(name, labels) for name, labels in samples(result.text)}


def test_sixty_new_topics_add_no_series(client, database):
    events.dispatch(database, "server.config_changed", status="finished")
    series(client)  # the scrape itself is counted from the next one on
    before = series(client)
    for n in range(20):
        events.dispatch(database, f"action.user_chosen_{n}", status=events.STATUSES[n % 5])
        events.dispatch(database, f"addon.kitsu.sync_{n}", status="failed")
        events.dispatch(database, f"{n}.x-\"' {{}}\n{n}", payload={"n": n})
    after = series(client)
    assert after == before
    figures = samples(client.simulate_get("/metrics").text)
    assert figures[("ayon_events", (("status", "failed"), ("topic_family", "other")))] == 20
    assert figures[("ayon_events", (("status", "pending"), ("topic_family", "other")))] == 20
    assert sum(v for (name, labels), v in figures.items()
               if name == "ayon_events" and ("topic_family", "action") in labels) == 20
    assert {dict(labels)["topic_family"] for name, labels in after if name == "ayon_events"} == {
        "server", "action", "other"}


def test_the_servers_own_topics_have_their_family(client, database):
    """The families come from the code's own topics: none of them counts as "other"."""
    assert client.simulate_patch("/api/config", json={"webactions": {"timeout": 60}}).status_code == 200
    assert client.simulate_post("/api/maintenance/run", json={}).status_code == 202
    assert client.simulate_post("/api/actions", json={"topic": "action.publish"}).status_code == 201
    events.dispatch(database, events.MAINTENANCE, status="finished")
    topics = {row[0] for row in database.fetchall("SELECT DISTINCT topic FROM events")}
    assert topics == {"server.config_changed", events.MAINTENANCE_REQUEST, "action.publish", events.MAINTENANCE}
    figures = samples(client.simulate_get("/metrics").text)
    assert sum(v for (name, labels), v in figures.items()
               if name == "ayon_events" and ("topic_family", "other") in labels) == 0
    assert sum(v for (name, labels), v in figures.items() if name == "ayon_events") == 4
    assert set(metrics.TOPIC_FAMILIES) == {topic.split(".")[0] for topic in topics}


def test_unknown_methods_share_one_label(client):
    for method in ("PROPFIND", "XYZ1", "XYZ2", "BREW"):
        client.simulate_request(method, "/api/info")
    metrics.flush()
    methods = {dict(labels)["method"] for name, labels in series(client) if name == "ayon_http_requests_total"}
    assert "other" in methods
    assert methods <= metrics.METHODS | {"other"}


def test_database_down_still_answers(pg):
    import falcon.testing

    from tests.apiclient import make_app
    from tests.pg import free_port

    client = falcon.testing.TestClient(make_app(f"postgresql://ayon@127.0.0.1:{free_port()}/nothing"))
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    assert samples(result.text)[("ayon_metrics_database_up", ())] == 0


# --- maintenance runs ---

NOW = time.time()
HOUR = 3600.0


class Raw(str):
    """JSON text stored as it is (Python could not write it: too deep)."""


def seed_run(database, status: str, ended: float, summary=None, description: str = "",
             topic: str = events.MAINTENANCE) -> None:
    """A run event as the runner leaves it, at a chosen time; `summary` any JSON value (odd ones too)."""
    text = summary if isinstance(summary, Raw) else json.dumps({} if summary is None else summary)
    database.execute(
        "INSERT INTO events (topic, status, description, summary, created_at, updated_at) "
        "VALUES (%s, %s, %s, %s::jsonb, to_timestamp(%s), to_timestamp(%s))",
        (topic, status, description, text, ended - 60, ended),
    )


def task(name: str, **values) -> dict:
    entry = {"name": name, "status": "finished", "duration_s": 1.5, "rows": 10, "error": None, "reason": None,
             "time_limit_s": 3600, "timed_out": False, "tables": ["logs"], "bytes_before": 5000, "bytes_after": 3000}
    entry.update(values)
    return entry


def figure(figures: dict, name: str, **labels) -> float | None:
    return figures.get((name, tuple(sorted(labels.items()))))


def named(figures: dict, name: str) -> dict:
    """{labels as a dict's sorted items: value} of one sample name."""
    return {labels: value for (sample, labels), value in figures.items() if sample == name}


def test_maintenance_figures_of_the_latest_runs(client, database):
    # An old run, from before the summary had sizes and limits: its figures are what it has.
    seed_run(database, "finished", NOW - 50 * HOUR, {"duration_s": 40.0, "tasks": [
        {"name": "vacuum", "status": "finished", "duration_s": 30.0, "rows": 0}]})
    seed_run(database, "aborted", NOW - 30 * HOUR, description="interrupted by shutdown")
    seed_run(database, "finished", NOW - 26 * HOUR, {"duration_s": 12.5, "tasks": [task("vacuum", duration_s=9.0)]})
    seed_run(database, "failed", NOW - 3 * HOUR, {
        "duration_s": 3700.0, "db_bytes_before": 9_000_000, "db_bytes_after": 7_500_000, "window_minutes": 0,
        "tasks": [
            task("remove_old_logs", status="failed", duration_s=3600.25, rows=123, timed_out=True,
                 error="time limit of 60 min reached; its statement was cancelled",
                 bytes_before=4_096_000, bytes_after=1_024_000),
            task("remove_old_events", rows=0, bytes_before=8192, bytes_after=16384),  # grew meanwhile
            task("remove_old_webactions", status="skipped", duration_s=0.0, rows=0, time_limit_s=None,
                 reason="switched off by maintenance.tasks.remove_old_webactions.enabled = false",
                 tables=[], bytes_before=None, bytes_after=None),
        ]}, description="1 of 3 tasks failed: remove_old_logs")
    # A dry run later than every run is no run, and neither is another topic's event.
    seed_run(database, "finished", NOW - 1 * HOUR, {"dry_run": True, "rows_total": 5, "duration_s": 0.5,
                                                      "tasks": [{"name": "vacuum", "rows": 5}]},
             topic=events.MAINTENANCE_PREVIEW)
    seed_run(database, "finished", NOW - 1 * HOUR, {"duration_s": 1.0}, topic="server.maintenance.request")

    figures = samples(client.simulate_get("/metrics").text)
    assert figure(figures, "ayon_metrics_database_up") == 1
    assert named(figures, "ayon_maintenance_last_run_timestamp_seconds") == {
        (("outcome", "finished"),): pytest.approx(NOW - 26 * HOUR, abs=0.01),
        (("outcome", "failed"),): pytest.approx(NOW - 3 * HOUR, abs=0.01),
        (("outcome", "interrupted"),): pytest.approx(NOW - 30 * HOUR, abs=0.01),
    }
    assert named(figures, "ayon_maintenance_last_run_status") == {
        (("status", "finished"),): 0, (("status", "failed"),): 1, (("status", "interrupted"),): 0}
    # The names from before: the latest run that finished.
    assert figure(figures, "ayon_maintenance_last_success_timestamp_seconds") == pytest.approx(NOW - 26 * HOUR,
                                                                                                abs=0.01)
    assert figure(figures, "ayon_maintenance_last_duration_seconds") == 12.5
    # Per task and the database: the latest run that ended (the failed one).
    assert figure(figures, "ayon_maintenance_database_bytes", when="before") == 9_000_000
    assert figure(figures, "ayon_maintenance_database_bytes", when="after") == 7_500_000
    assert named(figures, "ayon_maintenance_task_duration_seconds") == {
        (("task", "remove_old_logs"),): 3600.25, (("task", "remove_old_events"),): 1.5,
        (("task", "remove_old_webactions"),): 0.0}
    assert named(figures, "ayon_maintenance_task_rows") == {
        (("task", "remove_old_logs"),): 123, (("task", "remove_old_events"),): 0,
        (("task", "remove_old_webactions"),): 0}
    assert named(figures, "ayon_maintenance_task_bytes") == {
        (("task", "remove_old_logs"), ("when", "before")): 4_096_000,
        (("task", "remove_old_logs"), ("when", "after")): 1_024_000,
        (("task", "remove_old_events"), ("when", "before")): 8192,
        (("task", "remove_old_events"), ("when", "after")): 16384}
    assert named(figures, "ayon_maintenance_task_bytes_reclaimed") == {
        (("task", "remove_old_logs"),): 3_072_000, (("task", "remove_old_events"),): -8192}
    assert named(figures, "ayon_maintenance_task_timed_out") == {
        (("task", "remove_old_logs"),): 1, (("task", "remove_old_events"),): 0,
        (("task", "remove_old_webactions"),): 0}
    assert figure(figures, "ayon_maintenance_enabled") == 1
    assert figure(figures, "ayon_maintenance_in_progress") == 0


def test_a_run_whose_process_died_is_interrupted(client, database):
    seed_run(database, "finished", NOW - 30 * HOUR, {"duration_s": 5.0})
    seed_run(database, "failed", NOW - 2 * HOUR, description="interrupted: task 2/6: remove_old_events")
    seed_run(database, "in_progress", NOW - 0.5 * HOUR)
    figures = samples(client.simulate_get("/metrics").text)
    assert named(figures, "ayon_maintenance_last_run_status") == {
        (("status", "finished"),): 0, (("status", "failed"),): 0, (("status", "interrupted"),): 1}
    assert set(named(figures, "ayon_maintenance_last_run_timestamp_seconds")) == {
        (("outcome", "finished"),), (("outcome", "interrupted"),)}
    assert figure(figures, "ayon_maintenance_in_progress") == 1
    # The interrupted run left no summary: no task figures, not those of an older run.
    assert not named(figures, "ayon_maintenance_task_duration_seconds")
    assert not named(figures, "ayon_maintenance_database_bytes")


def test_before_the_first_run(client, database):
    """A fresh install: the switch, the limits and when setup ran; no run figures, every status 0."""
    set_up = database.fetchone("SELECT extract(epoch FROM min(applied_at)) FROM schema_migrations")[0]
    figures = samples(client.simulate_get("/metrics").text)
    assert figure(figures, "ayon_database_setup_timestamp_seconds") == pytest.approx(float(set_up))
    assert not named(figures, "ayon_maintenance_last_run_timestamp_seconds")
    assert set(named(figures, "ayon_maintenance_last_run_status").values()) == {0}
    assert len(named(figures, "ayon_maintenance_last_run_status")) == 3
    assert figure(figures, "ayon_maintenance_last_success_timestamp_seconds") is None
    assert figure(figures, "ayon_maintenance_in_progress") == 0
    assert figure(figures, "ayon_instances_stale_after_seconds") == 30


def test_switch_and_time_limits_follow_the_configuration(client, database):
    patch = {"maintenance": {"enabled": False, "max_minutes": 30, "tasks": {"vacuum": {"max_minutes": 5}}},
             "instances": {"stale_after": 90}}
    assert client.simulate_patch("/api/config", json=patch).status_code == 200
    figures = samples(client.simulate_get("/metrics").text)
    assert figure(figures, "ayon_maintenance_enabled") == 0
    limits = {dict(labels)["task"]: value for labels, value in
              named(figures, "ayon_maintenance_task_time_limit_seconds").items()}
    assert limits == {name: 300.0 if name == "vacuum" else 1800.0 for name in metrics._task_names()}
    assert figure(figures, "ayon_instances_stale_after_seconds") == 90


DEEP = Raw('{"duration_s": 1, "tasks": [' + "[" * 3000 + "]" * 3000 + "]}")  # deeper than Python's JSON reader goes


@pytest.mark.parametrize("summary", [
    [], "finished", 42, None, True, DEEP,
    {"tasks": "vacuum", "duration_s": "12", "db_bytes_before": True, "db_bytes_after": None},
    {"tasks": {"vacuum": {"duration_s": 1}}, "duration_s": [1], "db_bytes_before": {"n": 1}},
    {"tasks": [None, 7, "vacuum", ["vacuum"], {"name": ["vacuum"]}, {"name": {"x": 1}}, {"name": 3},
               {"name": None}, {"name": "../etc", "duration_s": 1}, {"name": "vacuum\n", "duration_s": 1}]},
    {"tasks": [{"name": "vacuum", "duration_s": "1.5", "rows": True, "bytes_before": "big", "bytes_after": -1,
                "timed_out": "yes"}]},
], ids=["list", "text", "number", "null", "boolean", "too-deep", "wrong-types", "tasks-as-mapping",
        "odd-names", "odd-task-values"])
def test_odd_summaries_never_fail_the_scrape(client, database, summary):
    seed_run(database, "finished", NOW - 2 * HOUR, {"duration_s": 7.0, "tasks": [task("vacuum", rows=3)]})
    seed_run(database, "failed", NOW - 1 * HOUR, summary, description="odd")
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    figures = samples(result.text)
    assert figure(figures, "ayon_metrics_database_up") == 1
    assert figure(figures, "ayon_maintenance_last_run_status", status="failed") == 1
    assert figure(figures, "ayon_maintenance_last_duration_seconds") == 7.0  # the finished run's is unharmed
    # Only registered task names, only what is a number (a finite one); nothing of the older run leaks in.
    tasks = {labels for name, labels in figures if name.startswith("ayon_maintenance_task_")
             and name != "ayon_maintenance_task_time_limit_seconds"}
    assert {dict(labels)["task"] for labels in tasks} <= {"vacuum"}
    assert figure(figures, "ayon_maintenance_task_rows", task="vacuum") is None
    assert figure(figures, "ayon_maintenance_task_timed_out", task="vacuum") is None
    assert all(math.isfinite(value) for value in figures.values())


def test_numbers_no_float_holds_are_left_out(client, database):
    """PostgreSQL keeps numbers of any size; those no float holds are left out, and the rest of the summary stays."""
    huge = "1" + "0" * 400
    seed_run(database, "finished", NOW - HOUR, Raw(
        f'{{"duration_s": {huge}, "db_bytes_before": -{huge}, "db_bytes_after": 1e308, "tasks": ['
        f'{{"name": "vacuum", "duration_s": 1e400, "rows": 1{"0" * 5000}, "timed_out": true, "bytes_before": 2.5}}]}}'))
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    figures = samples(result.text)
    assert figure(figures, "ayon_maintenance_last_duration_seconds") is None
    assert named(figures, "ayon_maintenance_database_bytes") == {(("when", "after"),): 1e308}
    assert figure(figures, "ayon_maintenance_task_duration_seconds", task="vacuum") is None
    assert figure(figures, "ayon_maintenance_task_rows", task="vacuum") is None
    assert figure(figures, "ayon_maintenance_task_timed_out", task="vacuum") == 1
    assert figure(figures, "ayon_maintenance_task_bytes", task="vacuum", when="before") == 2.5


def test_a_task_listed_twice_counts_once(client, database):
    seed_run(database, "finished", NOW - HOUR,
             {"tasks": [task("vacuum", duration_s=2.0), task("vacuum", duration_s=9.0)]})
    text = client.simulate_get("/metrics").text
    assert text.count('ayon_maintenance_task_duration_seconds{task="vacuum"}') == 1
    assert samples(text)[("ayon_maintenance_task_duration_seconds", (("task", "vacuum"),))] == 2.0


def test_the_run_figures_use_the_events_index(database):
    """Among many events, the latest run of each outcome is found through the topic index, not by reading them all."""
    database.execute("INSERT INTO events (topic, status) "
                     "SELECT 'action.bulk_' || n % 50, 'finished' FROM generate_series(1, 20000) AS n")
    for n in range(30):
        seed_run(database, "finished", NOW - n * 24 * HOUR, {"duration_s": 1.0})
    database.execute("ANALYZE events")
    with database.transaction() as cur:
        cur.execute("EXPLAIN " + metrics._LATEST_RUNS, {"topic": events.MAINTENANCE})
        plan = "\n".join(row[0] for row in cur.fetchall())
    assert "events_topic" in plan and "Seq Scan on events" not in plan, plan


def test_batched_latencies_equal_what_observe_would_record():
    from prometheus_client import CollectorRegistry, Histogram

    values = [0.0, 0.0005, 0.001, 0.0011, 0.0025, 0.004, 0.05, 0.3, 1.0, 9.99, 10.0, 20.0, 1e9]
    reference = Histogram("reference", "the same buckets, observed one by one", ["method", "route"],
                          buckets=metrics._BOUNDS, registry=CollectorRegistry())
    pending = metrics._Pending()
    for value in values:
        reference.labels("GET", "/test/batched").observe(value)
        pending.add("GET", "/test/batched", 200, value)
    pending.flush()

    def samples(histogram):
        return [(s.name.rsplit("_", 1)[-1], s.labels.get("le"), s.value)
                for metric in histogram.collect() for s in metric.samples
                if s.labels.get("route") == "/test/batched" and not s.name.endswith("_created")]

    assert samples(metrics.LATENCY) == samples(reference)
    assert ("count", None, len(values)) in samples(metrics.LATENCY)


def test_figures_noted_while_flushes_run_are_counted_once():
    """Requests note their figures without a lock while the flusher takes them: none lost, none twice."""
    route, per_thread, threads = "/test/concurrent", 40000, 4

    def counted() -> float:
        return sum(s.value for metric in metrics.REQUESTS.collect() for s in metric.samples
                   if s.labels.get("route") == route and s.name.endswith("_total"))

    before = counted()
    pending = metrics._Pending()
    flushes = 0

    def note(n: int) -> None:
        for i in range(per_thread):
            pending.add("GET", route, 200, 0.001 * (i % 7))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads take turns often: flushes land between notes
    try:
        with ThreadPoolExecutor(threads + 1) as pool:
            noting = [pool.submit(note, n) for n in range(threads)]
            while not all(f.done() for f in noting):
                pending.flush()  # beside the flusher thread the first add started
                flushes += 1
            for f in noting:
                f.result()
    finally:
        sys.setswitchinterval(interval)
    pending.flush()
    assert flushes >= 1  # each began while figures were still being noted
    assert counted() - before == per_thread * threads
    assert not pending.noted
