"""The logcollector program, run for real against real producers and a real PostgreSQL."""

import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from server.core import logspool, settings
from tests.apiclient import wait_for
from tests.conftest import ROOT

# A producer: `python -c PRODUCER NAME COUNT RATE PAD` logs COUNT numbered records through setup_logging.
PRODUCER = """
import sys, time
from server.core import settings
from server.core.logs import setup_logging
name, count, rate, pad = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), "x" * int(sys.argv[4])
log = setup_logging(name, settings.load())
start = time.monotonic()
for n in range(count):
    log.info("record %d %s", n, pad, extra={"n": n})
    ahead = start + n / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)  # pacing the producer's rate
"""


def producer(env, name, count, rate, pad=100):
    return subprocess.Popen([sys.executable, "-c", PRODUCER, name, str(count), str(rate), str(pad)], env=env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def collector(env, out):
    return subprocess.Popen([sys.executable, "-m", "procs.logcollector"], env=env, cwd=ROOT,
                            stdout=out, stderr=subprocess.STDOUT)




def counts(database, prefix="producer"):
    """{program: {number: times stored}} for the producers' records."""
    rows = database.fetchall(
        "SELECT program, (extras->>'n')::int, count(*) FROM logs WHERE program LIKE %s GROUP BY 1, 2",
        (prefix + "%",),
    )
    result = {}
    for program, n, times in rows:
        result.setdefault(program, {})[n] = times
    return result


def spool_bytes(env):
    directory = logspool.spool_dir(settings.load(env).data_dir)
    try:
        return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
                   if f.endswith(logspool.SUFFIX))
    except FileNotFoundError:
        return 0


def collector_info(database):
    row = database.fetchone("SELECT info FROM instances WHERE instance_id = 'test' AND program = 'logcollector'")
    return row[0] if row else {}


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_every_record_exactly_once_through_kills_and_a_database_outage(pg, env, database, tmp_path):
    per_producer, rate = 9000, 500
    producers = [producer(env, f"producer{i}", per_producer, rate) for i in range(3)]
    kills, outage_done, down_until = 0, pg.embedded is None, None
    rng = random.Random(5)
    logs = []

    def launch():
        logs.append(tmp_path / f"collector{len(logs)}.log")
        return collector(env, open(logs[-1], "wb"))

    def working():
        # Past start-up: ingesting, or (PostgreSQL down) guarding the spool while it waits.
        text = logs[-1].read_text()
        return "logcollector started" in text or "waiting for PostgreSQL" in text

    proc = launch()
    try:
        while kills < 22 or any(p.poll() is None for p in producers):
            wait_for(working, 30, "the collector to start working")
            if kills == 6 and not outage_done:
                # PostgreSQL goes away under a working collector, then stays away across restarts.
                pg.embedded.stop()
                down_until = time.monotonic() + 4
                wait_for(lambda: "PostgreSQL unavailable" in logs[-1].read_text(), 15, "the outage warning")
            time.sleep(rng.uniform(0, 0.5))  # a random point of its work: the kill is the test
            proc.kill()
            proc.wait(10)
            kills += 1
            if down_until and not outage_done and time.monotonic() > down_until:
                pg.embedded.start()
                outage_done = True
            proc = launch()
        assert [p.wait(30) for p in producers] == [0, 0, 0], [p.stderr.read() for p in producers]
        expected = {f"producer{i}": {n: 1 for n in range(per_producer)} for i in range(3)}
        wait_for(lambda: sum(map(len, counts(database).values())) >= 3 * per_producer, 40, "every record")
        assert counts(database) == expected
        assert kills >= 20
        if pg.embedded is not None:
            outputs = [path.read_text() for path in logs]
            assert sum("PostgreSQL unavailable, records wait in the spool" in text for text in outputs) == 1
            assert sum("waiting for PostgreSQL" in text for text in outputs) >= 2
            assert sum("logcollector started" in text for text in outputs) >= 10
        # Fully consumed files of finished writers are removed, and so are their position rows.
        wait_for(lambda: spool_bytes(env) < 64 * 1024, 20, "the consumed spool files to be removed")
        # A file goes before its row, in two steps of the collector: the rows follow within a pass or two.
        wait_for(lambda: not any(row[0].startswith("producer")
                                 for row in database.fetchall("SELECT file FROM log_spool_positions")),
                 20, lambda: "the removed files' position rows to be deleted: "
                 + str(database.fetchall("SELECT file FROM log_spool_positions")))
    finally:
        if pg.embedded is not None and pg.embedded.proc is None:
            pg.embedded.start()
        stop(proc)
        for p in producers:
            stop(p)


def test_spool_over_its_cap_drops_the_oldest_and_reports_it(env, database, tmp_path):
    env["AYON_LOG_SPOOL_MAX"] = "512K"
    per_producer = 5000
    producers = [producer(env, f"producer{i}", per_producer, 1500, pad=300) for i in range(2)]
    out = open(tmp_path / "collector.log", "ab")
    proc = None
    try:
        # The spool grows past its cap while no collector runs; producers do not notice.
        wait_for(lambda: spool_bytes(env) > 800 * 1024, 20, "the spool to pass its cap")
        assert all(p.poll() is None for p in producers)
        proc = collector(env, out)
        assert [p.wait(30) for p in producers] == [0, 0]
        info = wait_for(lambda: (i := collector_info(database)).get("dropped_total") and
                        sum(map(len, counts(database).values())) + i["dropped_total"] >= 2 * per_producer and i,
                        30, "the drop to be reported")
        stored = counts(database)
        assert sum(map(len, stored.values())) + info["dropped_total"] == 2 * per_producer
        assert all(times == 1 for numbers in stored.values() for times in numbers.values())
        for name, numbers in stored.items():
            # The oldest went, the newest stayed (a collector falling behind may drop again later, so
            # what is missing need not be one prefix).
            assert 0 not in numbers and per_producer - 1 in numbers, name
        assert info["spool_bytes"] <= 512 * 1024
        assert set(info) == {"lag_seconds", "spool_bytes", "dropped_total", "ingested_total"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc is not None:
            stop(proc)
        for p in producers:
            stop(p)
    # Reported in log lines too (drops close together are summed into one line every 10 s; a stop says the rest).
    output = (tmp_path / "collector.log").read_text()
    reported = re.findall(rf"log spool over its cap of {512 * 1024} bytes: dropped the (\d+) oldest records", output)
    assert reported and sum(map(int, reported)) == info["dropped_total"]
    assert f"{info['dropped_total']} dropped since start" in output


def test_sigterm_drains_and_exits_promptly(env, database, tmp_path):
    proc = collector(env, subprocess.PIPE)
    try:
        wait_for(lambda: collector_info(database) != {}, 30, "the collector's first heartbeat")
        assert producer(env, "producer0", 3000, 100000).wait(30) == 0
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        output = proc.communicate(timeout=10)[0].decode()
        assert time.monotonic() - started < 5
        assert proc.returncode == 0, output
        assert "logcollector stopping on SIGTERM" in output
        assert counts(database) == {"producer0": {n: 1 for n in range(3000)}}
    finally:
        stop(proc)


def test_malformed_line_is_kept_as_an_unreadable_record(env, database, tmp_path):
    directory = logspool.spool_dir(settings.load(env).data_dir)
    os.makedirs(directory)
    good = logspool.encode(time.time(), "INFO", "test", "producer0", 1, "t", "fine", {"n": 1})
    with open(os.path.join(directory, "old-1-abcdef-000001.copy"), "wb") as fh:
        fh.write(good + b"not\ta\trecord\n" + good.replace(b'"n": 1', b'"n": 2'))
    proc = collector(env, subprocess.DEVNULL)
    try:
        wait_for(lambda: counts(database).get("producer0", {}).get(2), 30, "the records after the bad one")
        assert counts(database) == {"producer0": {1: 1, 2: 1}}
        (message, raw), = database.fetchall(
            "SELECT message, extras->>'raw' FROM logs WHERE message LIKE 'unreadable spool record%'")
        assert message.startswith("unreadable spool record in old-1-abcdef-000001.copy: ")
        assert raw == "not\ta\trecord"
        wait_for(lambda: not os.path.exists(os.path.join(directory, "old-1-abcdef-000001.copy")), 10,
                 "the consumed file to be removed")
    finally:
        stop(proc)


@pytest.mark.parametrize("value", ["0", "lots"])
def test_bad_cap_setting_is_one_error_line(env, value):
    env["AYON_LOG_SPOOL_MAX"] = value
    result = subprocess.run([sys.executable, "-m", "procs.logcollector"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"Error: AYON_LOG_SPOOL_MAX='{value}': "
                                     "expected a size such as 512M, 2G or a number of bytes")


def test_benchmark_harness_runs(pg):
    result = subprocess.run([sys.executable, "-m", "bench.logs", "--smoke", "--postgres-url", pg.server_url],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"ceiling \(COPY from memory\): +[\d,]+ records/s", result.stdout), result.stdout
    assert re.search(r"collector \(spool -> table, sustained\): +[\d,]+ records/s = [\d.]+ of the ceiling",
                     result.stdout), result.stdout
    assert re.search(r"latency at 1,000 records/s \(1000 records, 20 ms polls\): p50 \d+ ms, p99 \d+ ms",
                     result.stdout), result.stdout
