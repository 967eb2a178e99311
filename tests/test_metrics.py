"""GET /metrics: counts from two real gunicorn workers add up; database figures are read at scrape time."""

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor

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
