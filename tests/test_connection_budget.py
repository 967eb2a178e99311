"""The connection budget: pools close idle connections, a worker's two pools share one budget, an idle instance
holds only its LISTEN connections (README, "Connection budget")."""

import asyncio
import threading
import time

from server.core import db
from server.core.aiodb import AsyncReader
from tests.instance import Instance, http_get, poll
from tests.roles import names_for

ALL_PROGRAMS = set(names_for(server=True, setup=True, maintenance=True, embedded=False))
IDLE_TARGET = 6  # the bound for an idle all-in-one instance

# Ours and every process's on this test's database; the sampling connection is left out.
MINE = """SELECT application_name, count(*), count(*) FILTER (WHERE backend_start < now() - interval '3 seconds')
          FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'
          AND pid <> pg_backend_pid() AND application_name LIKE %s GROUP BY 1 ORDER BY 1"""


def counts(database, like: str = "ayon-%") -> dict[str, tuple[int, int]]:
    """(open, open for more than 3 s) by application name."""
    return {name: (n, held) for name, n, held in database.fetchall(MINE, (like,))}


def test_a_pool_closes_idle_connections_and_keeps_busy_ones(database, database_url):
    pool = db.Database(database_url, size=3, application_name="ayon-test-idle", idle=1)
    threads = [threading.Thread(target=lambda: pool.fetchone("SELECT pg_sleep(0.3)")) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts(database, "ayon-test-idle")["ayon-test-idle"][0] == 3
    # Used every 0.2 s, one stays; the two others close after a second unused.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        pool.fetchone("SELECT 1")
        time.sleep(0.2)  # the load itself: one statement every 0.2 s
    assert counts(database, "ayon-test-idle")["ayon-test-idle"][0] == 1
    poll(lambda: "ayon-test-idle" not in counts(database, "ayon-test-idle"), 5, "the last idle connection to close")
    assert pool.budget.open == 0


def test_a_worker_thread_pool_and_event_loop_share_one_budget(database, database_url):
    pool = db.Database(database_url, size=2, application_name="ayon-test-shared")
    seen = []

    async def main():
        reader = AsyncReader(database_url, 2, "ayon-test-shared", idle=pool.idle, budget=pool.budget)
        loop = asyncio.get_running_loop()

        def blocking():  # what AppContext.run hands to a thread
            with pool.transaction() as cur:
                cur.execute("SELECT pg_sleep(0.2)")
                seen.append(pool.budget.open)

        async def read():
            await reader.fetch_text("SELECT pg_sleep(0.2)::text")
            seen.append(pool.budget.open)

        for _ in range(3):
            await asyncio.gather(*[read() for _ in range(4)],
                                 *[loop.run_in_executor(None, blocking) for _ in range(4)])
        reader.close()

    asyncio.run(main())
    assert len(seen) == 24 and max(seen) <= 2
    pool.close()
    assert pool.budget.open == 0
    assert "ayon-test-shared" not in counts(database, "ayon-test-shared")


def test_an_idle_all_in_one_instance_holds_at_most_six_connections(env, database, tmp_path):
    instance = Instance(env, tmp_path / "one", AYON_DB_IDLE_SECONDS="2").start()
    try:
        instance.wait_ready(120)
        instance.wait_running(ALL_PROGRAMS - {"setup"}, 60)
        for _ in range(20):
            assert http_get(instance.url + "/api/events?limit=5", token="test-token")[0] == 200
        # After the idle period: what is held is the programs' LISTEN connections and the maintenance
        # daemon's poll; heartbeats open and close within a beat.
        poll(lambda: sum(held for _, held in counts(database).values()) <= IDLE_TARGET, 20,
             lambda: f"at most {IDLE_TARGET} held connections: {counts(database)}")
        samples = []
        deadline = time.monotonic() + 6  # more than a heartbeat interval
        while time.monotonic() < deadline:
            samples.append(counts(database))
            time.sleep(0.1)  # sampling pace
        held = [sum(h for _, h in s.values()) for s in samples]
        opened = [sum(n for n, _ in s.values()) for s in samples]
        print(f"\nidle all-in-one: held {max(held)}, open {min(opened)}–{max(opened)}; {samples[-1]}")
        assert max(held) <= IDLE_TARGET, samples[held.index(max(held))]
        assert sorted(opened)[len(opened) // 2] <= IDLE_TARGET, samples
    finally:
        instance.kill()
