"""GET /metrics: counts from two real gunicorn workers add up; database figures are read at scrape time."""

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from server import events
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
        "duration_s": 12.5, "tasks": [{"name": "vacuum", "status": "finished", "duration_s": 2.25, "rows": 0}]})
    database.execute(
        "INSERT INTO instances (instance_id, program, info) VALUES "
        "('i1', 'logcollector', '{\"lag_seconds\": 0.75, \"spool_bytes\": 4096, \"dropped_total\": 3, "
        "\"ingested_total\": 1000}'), ('i1', 'installer', '{\"queue_depth\": 4}'), ('i1', 'server', '{}')"
    )
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    figures = samples(result.text)
    assert figures[("ayon_metrics_database_up", ())] == 1
    assert figures[("ayon_events", (("status", "failed"), ("topic", "test.thing")))] == 2
    assert figures[("ayon_maintenance_last_duration_seconds", ())] == 12.5
    assert figures[("ayon_maintenance_task_duration_seconds", (("task", "vacuum"),))] == 2.25
    assert figures[("ayon_maintenance_last_success_timestamp_seconds", ())] > 1.7e9
    assert figures[("ayon_logcollector_lag_seconds", (("instance", "i1"),))] == 0.75
    assert figures[("ayon_logcollector_spool_bytes", (("instance", "i1"),))] == 4096
    assert figures[("ayon_logcollector_dropped_total", (("instance", "i1"),))] == 3
    assert figures[("ayon_logcollector_ingested_total", (("instance", "i1"),))] == 1000
    assert figures[("ayon_installer_queue_depth", (("instance", "i1"),))] == 4
    assert ("ayon_instance_last_seen_timestamp_seconds", (("instance", "i1"), ("program", "server"))) in figures


def test_database_down_still_answers(pg):
    import falcon.testing

    from tests.apiclient import make_app
    from tests.pg import free_port

    client = falcon.testing.TestClient(make_app(f"postgresql://ayon@127.0.0.1:{free_port()}/nothing"))
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    assert samples(result.text)[("ayon_metrics_database_up", ())] == 0
