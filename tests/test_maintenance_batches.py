"""The batched event removal: a keyset walk that goes on across batches and tied times."""

import re

from maintenance.tasks import _events
from server.core import db
from tests.apiclient import wait_for
from tests.test_maintenance import run_cli, start_cli


def test_removal_across_many_batches_and_tied_times_keeps_exactly_what_must_stay(env, database):
    # More rows than two batches, most sharing one updated_at: the walk must go on past a
    # tie on (updated_at, id), neither stopping at a batch's last row nor taking a kept row.
    old = "now() - interval '200 days'"
    rows = 2 * _events.BATCH + 37
    with database.transaction() as cur:
        # now() is the transaction's start: every {old} below is the same instant.
        cur.execute(
            f"INSERT INTO events (topic, status, created_at, updated_at) SELECT 'test.old', 'finished', {old}, "
            f"CASE WHEN n %% 3 = 0 THEN {old} - make_interval(secs => n) ELSE {old} END "
            "FROM generate_series(1, %s) n", (rows,))
        # Kept: unfinished, depended on, recent; all as old as the removed ones but the recent one.
        cur.execute(f"INSERT INTO events (topic, status, updated_at) SELECT 'test.pending', 'pending', {old} "
                    "FROM generate_series(1, 25)")
        cur.execute(f"INSERT INTO events (topic, status, updated_at) VALUES ('test.parent', 'finished', {old}) "
                    "RETURNING id")
        parent = cur.fetchone()[0]
        cur.execute("INSERT INTO events (topic, status, depends_on) VALUES ('test.child', 'finished', %s)", (parent,))
        cur.execute("INSERT INTO events (topic, status) VALUES ('test.recent', 'finished')")
    result = run_cli(env, "--task", "remove_old_events", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"remove_old_events +finished +[\d.]+ s +{rows} rows$", result.stdout, re.M), result.stdout
    left = dict(database.fetchall("SELECT topic, count(*) FROM events WHERE topic LIKE 'test.%%' GROUP BY topic"))
    assert left == {"test.pending": 25, "test.parent": 1, "test.child": 1, "test.recent": 1}


def test_an_event_updated_while_its_batch_waits_for_it_is_kept(env, database, database_url):
    # The batch found the event old; before its DELETE reaches it, another transaction updates it (so
    # its updated_at is now). The row it meant to delete has moved: the event stays.
    old = "now() - interval '200 days'"
    with database.transaction() as cur:
        cur.execute(f"INSERT INTO events (topic, status, updated_at) VALUES ('test.touched', 'finished', "
                    f"{old} - interval '1 day') RETURNING id")
        touched = cur.fetchone()[0]
        cur.execute(f"INSERT INTO events (topic, status, updated_at) SELECT 'test.old', 'finished', {old} "
                    "FROM generate_series(1, 100)")
    holder = db.connect(database_url, "ayon-test-holder")
    try:
        with holder.cursor() as cur:
            cur.execute("UPDATE events SET description = 'touched meanwhile' WHERE id = %s", (touched,))
        run = start_cli(env, "--task", "remove_old_events")
        try:
            wait_for(lambda: database.fetchone(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'ayon-maintenance%%' "
                "AND wait_event_type = 'Lock'")[0] > 0, 30, "the batch to wait for the updated row's lock")
            holder.commit()
            output, _ = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
    finally:
        holder.close()
    assert run.returncode == 0, output
    assert re.search(r"remove_old_events +finished +[\d.]+ s +100 rows$", output, re.M), output
    assert database.fetchone("SELECT description, updated_at > now() - interval '1 hour' FROM events "
                             "WHERE id = %s", (touched,)) == ("touched meanwhile", True)
    assert database.fetchone("SELECT count(*) FROM events WHERE topic = 'test.old'") == (0,)
