"""A rolling restart behind HAProxy under wrk: two server-only instances, `supervisorctl restart server` one at a time.

HAProxy checks /health/ready every 200 ms; each server drains (server/drain.py)
for AYON_DRAIN_SECONDS after its SIGTERM, so HAProxy takes it out before it
stops listening. The goal, and the assertion: not one failed request.
"""

import re
import signal
import subprocess

from tests.instance import Instance, poll
from tests.roles import names_for

TOKEN = "test-token"
DRAIN = 2
SERVER_ONLY = {"AYON_RUN_SETUP": "false", "AYON_RUN_MAINTENANCE": "false", "AYON_SERVER_WORKERS": "1",
               "AYON_DRAIN_SECONDS": str(DRAIN)}
SERVER_PROGRAMS = set(names_for(server=True, setup=False, maintenance=False, embedded=False))
# wrk's Lua: the admin token on every request, and a pause of a few ms between a connection's
# requests, so the load stays light on a shared machine.
LOAD_SCRIPT = f"""
wrk.headers["Authorization"] = "Bearer {TOKEN}"
function delay() return 5 end
"""
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(text: str) -> dict:
    """wrk's summary: requests, non-2xx/3xx answers, socket errors by kind, and the longest latency (s)."""
    requests = re.search(r"^\s*(\d+) requests in ", text, re.MULTILINE)
    latency = re.search(r"^\s*Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m)\s", text, re.MULTILINE)
    assert requests and latency, f"wrk's output has no summary:\n{text}"
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "requests": int(requests[1]),
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"), map(int, sockets.groups()), strict=True))
        if sockets else {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        "longest": float(latency[1]) * UNITS[latency[2]],
    }


def test_parse_wrk_reads_errors_and_the_longest_request():
    text = ("Running 5m test @ http://127.0.0.1:1/api/events\n  1 threads and 4 connections\n"
            "  Thread Stats   Avg      Stdev     Max   +/- Stdev\n"
            "    Latency     3.49ms    1.02ms   1.20s    80.00%\n    Req/Sec   200.00     10.00   300.00     70.00%\n"
            "  5000 requests in 20.00s, 1.00MB read\n  Socket errors: connect 1, read 2, write 0, timeout 3\n"
            "  Non-2xx or 3xx responses: 4\nRequests/sec:    250.00\nTransfer/sec:     51.20KB\n")
    assert parse_wrk(text) == {"requests": 5000, "non_2xx": 4, "longest": 1.2,
                               "socket_errors": {"connect": 1, "read": 2, "write": 0, "timeout": 3}}


def restart(node: Instance, name: str, proxy) -> None:
    """`supervisorctl restart server` on `node`, then wait until HAProxy sends it requests again."""
    old = node.pid_of("server")
    assert old, node.status()
    result = node.ctl("restart", "server")
    assert "server: started" in result.stdout, (result, node.output[-3000:])
    assert node.pid_of("server") not in (None, old)
    poll(lambda: proxy.states()[name] == "UP", 60,
         lambda: f"HAProxy to see {name} UP again: {proxy.states()}\n{node.output[-3000:]}")


def test_rolling_restart_behind_haproxy_drops_no_request(env, tmp_path, haproxy):
    nodes = {f"node{i}": Instance(env, tmp_path / f"node{i}", AYON_INSTANCE_ID=f"node{i}", **SERVER_ONLY)
             for i in (1, 2)}
    wrk = None
    try:
        for node in nodes.values():
            node.start()
        for node in nodes.values():
            node.wait_ready(120)
            node.wait_running(SERVER_PROGRAMS, 60)
        proxy = haproxy({name: f"127.0.0.1:{node.port}" for name, node in nodes.items()})
        poll(lambda: set(proxy.states().values()) == {"UP"}, 30, lambda: f"both servers UP: {proxy.states()}")

        script = tmp_path / "load.lua"
        script.write_text(LOAD_SCRIPT)
        wrk = subprocess.Popen(["wrk", "-t1", "-c4", "-d300s", "--timeout", "10s", "-s", str(script),
                                proxy.url + "/api/events"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        poll(lambda: int(proxy.stats()["FRONTEND"]["req_tot"] or 0) >= 100, 30, "wrk's first 100 requests")

        for name, node in nodes.items():
            restart(node, name, proxy)
        # Both serve again before the load ends.
        before = {name: int(proxy.stats()[name]["stot"]) for name in nodes}
        poll(lambda: all(int(proxy.stats()[name]["stot"]) > before[name] for name in nodes), 30,
             "requests on both restarted servers")

        wrk.send_signal(signal.SIGINT)  # wrk stops and prints its summary
        output, _ = wrk.communicate(timeout=30)
        found = parse_wrk(output)
        failed = found["non_2xx"] + sum(found["socket_errors"].values())
        print(f"rolling restart under wrk: {found['requests']} requests, {failed} failed "
              f"({found['non_2xx']} non-2xx, socket errors {found['socket_errors']}), "
              f"longest {found['longest'] * 1000:.0f} ms")
        assert found["requests"] >= 200, output
        assert failed == 0, output + "\n" + proxy.output()[-3000:]
        backend = proxy.stats()["BACKEND"]
        retried = {key: int(backend[key] or 0) for key in ("econ", "eresp", "wretr", "wredis", "hrsp_5xx")}
        print(f"HAProxy: connection errors {retried['econ']}, response errors {retried['eresp']}, "
              f"retries {retried['wretr']}, redispatches {retried['wredis']}, 5xx {retried['hrsp_5xx']}")
        # The drain did it, not HAProxy's retries: no request reached a server that had stopped listening.
        assert retried == dict.fromkeys(retried, 0), proxy.output()[-3000:]
        for name, node in nodes.items():
            assert f"Draining for {DRAIN} s" in node.output
            # Taken out by its readiness answer while it still served, not by a refused connection.
            assert f"Server servers/{name} is DOWN, reason: Layer7 wrong status, code: 503" in proxy.output()
    finally:
        if wrk is not None and wrk.poll() is None:
            wrk.kill()
            wrk.wait()
        for node in nodes.values():
            node.kill()
