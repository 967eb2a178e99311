"""The webactions API: in-process for the contract, a real gunicorn for concurrent takers."""

import json
import threading

from tests.apiclient import AUTH, assert_error, client, gunicorn, http  # noqa: F401 (fixtures)


def create(client, topic="action.render", payload=None):
    result = client.simulate_post("/api/actions", json={"topic": topic, "payload": payload or {}})
    assert result.status_code == 201, result.text
    return result.json


def test_lifecycle(client):
    action = create(client, payload={"shot": "sh010"})
    assert action["status"] == "pending" and action["payload"] == {"shot": "sh010"}
    assert action["topic"] == "action.render"
    taken = client.simulate_post(f"/api/actions/{action['id']}/take", json={"who": "farm-7"})
    assert taken.status_code == 200 and taken.json["status"] == "in_progress"
    assert taken.json["description"] == "taken by farm-7"
    assert_error(client.simulate_post(f"/api/actions/{action['id']}/take"), 409, "is in_progress, not pending")
    done = client.simulate_post(f"/api/actions/{action['id']}/finish", json={"summary": {"frames": 24}})
    assert done.status_code == 200 and done.json["status"] == "finished" and done.json["summary"] == {"frames": 24}
    assert_error(client.simulate_post(f"/api/actions/{action['id']}/fail"), 409, "is finished")
    assert client.simulate_get(f"/api/actions/{action['id']}").json["status"] == "finished"

    other = create(client, "action.publish")
    failed = client.simulate_post(f"/api/actions/{other['id']}/fail", json={"description": "no disk"})
    assert failed.json["status"] == "failed" and failed.json["description"] == "no disk"


def test_listing_by_status(client):
    ids = [create(client, f"action.a{i}")["id"] for i in range(3)]
    client.simulate_post(f"/api/actions/{ids[0]}/take")
    pending = client.simulate_get("/api/actions", params={"status": "pending"}).json["actions"]
    assert [a["id"] for a in pending] == [ids[2], ids[1]]
    everything = client.simulate_get("/api/actions").json["actions"]
    assert [a["id"] for a in everything] == ids[::-1]
    assert_error(client.simulate_get("/api/actions", params={"status": "done"}), 400, "'status'", "pending")
    assert_error(client.simulate_get("/api/actions", params={"colour": "red"}), 400, "'colour'")


def test_bad_requests_name_the_problem(client):
    assert_error(client.simulate_post("/api/actions", json={"topic": "server.x"}), 400, "must start with 'action.'")
    assert_error(client.simulate_post("/api/actions", json={"payload": {}}), 400, "'topic' is required")
    assert_error(client.simulate_post("/api/actions", json={"topic": "action.x", "payload": [1]}), 400,
                 "'payload' must be an object")
    assert_error(client.simulate_post("/api/actions", json={"topic": "action.x", "colour": 1}), 400,
                 "unknown key 'colour'")
    assert_error(client.simulate_post("/api/actions", body="{not json", headers={"Content-Type": "application/json"}),
                 400, "not valid JSON")
    missing = "00000000-0000-0000-0000-000000000000"
    assert_error(client.simulate_post(f"/api/actions/{missing}/take"), 404, f"no webaction {missing}")
    assert_error(client.simulate_get("/api/actions/not-a-uuid"), 404, "no webaction not-a-uuid")
    assert_error(client.simulate_get("/api/actions", headers={"Authorization": ""}), 401)


def test_concurrent_takers_over_http_have_one_winner(gunicorn):
    headers = {**AUTH, "Content-Type": "application/json"}
    for _ in range(5):
        status, body, _ = http(gunicorn.url + "/api/actions", "POST", headers,
                               json.dumps({"topic": "action.render", "payload": {}}).encode())
        assert status == 201, body
        action_id = json.loads(body)["id"]
        barrier, statuses = threading.Barrier(8), []

        def take(n):
            barrier.wait()
            statuses.append(http(f"{gunicorn.url}/api/actions/{action_id}/take", "POST", headers,
                                 json.dumps({"who": f"taker-{n}"}).encode(), timeout=10)[0])

        threads = [threading.Thread(target=take, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert sorted(statuses) == [200] + [409] * 7, statuses
