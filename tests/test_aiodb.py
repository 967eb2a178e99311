"""Read-only statements on the event loop (server/core/aiodb.py) against the real PostgreSQL."""

import asyncio
import json

import psycopg2
import pytest

from server.api.events import LIST_SQL, list_query, plan_fits_all
from server.core import events
from server.core.aiodb import AsyncReader
from tests.apiclient import wait_for
from tests.pg import free_port

PLANS = """SELECT json_object_agg(name, json_build_object('generic', generic_plans, 'custom', custom_plans))::text
           FROM pg_prepared_statements"""


def run(coro):
    return asyncio.run(coro)


def page_query(**query):
    values = {"topic": None, "status": None, "created_since": None, "created_until": None,
              "updated_since": None, "updated_until": None, "limit": 2, "cursor": None}
    values.update(query)
    return list_query(values)


def test_answers_parameters_percent_signs_and_no_row(database_url):
    async def scenario():
        reader = AsyncReader(database_url, 2)
        try:
            assert await reader.fetch_text("SELECT %(a)s::text || %(b)s::text", {"a": "x", "b": "y"}) == "xy"
            # A literal % with and without parameters, as psycopg2 spells it (%%).
            assert await reader.fetch_text("SELECT '100%%' || %(a)s::text", {"a": "!"}) == "100%!"
            assert await reader.fetch_text("SELECT '50%%'") == "50%"
            assert await reader.fetch_text("SELECT 'x' WHERE false") is None
            # Times come out in UTC whatever the server's zone.
            assert await reader.fetch_text("SELECT current_setting('TimeZone')") == "UTC"
        finally:
            reader.close()

    run(scenario())


def test_the_events_page_gets_a_generic_plan_and_a_filtered_page_its_own(database, database_url):
    for n in range(5):
        events.dispatch(database, "test.plan", description=str(n))
    sql, params = page_query()
    filtered_sql, filtered = page_query(topic="test.*")
    assert plan_fits_all(params) and not plan_fits_all(filtered)

    async def scenario():
        reader = AsyncReader(database_url, 1)  # one connection: every statement below shares its session
        try:
            for _ in range(7):
                page = json.loads(await reader.fetch_text(sql, params, generic=plan_fits_all(params)))
                assert len(page["events"]) == 2 and page["next_cursor"]
                assert len(json.loads(await reader.fetch_text(filtered_sql, filtered,
                                                              generic=plan_fits_all(filtered)))["events"]) == 2
            return json.loads(await reader.fetch_text(PLANS))
        finally:
            reader.close()

    plans = run(scenario())
    # Prepared in this order on the one connection: the page, then the filtered page.
    assert plans["ayon_0"] == {"generic": 7, "custom": 0}, plans
    # PostgreSQL's own choice for the filtered page: planned for its values (its first 5 at least).
    assert plans["ayon_1"]["custom"] >= 5, plans
    assert LIST_SQL.count("%(limit)s") == 4  # the page statement this test reads is the server's


def test_a_terminated_connection_is_replaced_without_an_error(database, database_url):
    async def scenario():
        reader = AsyncReader(database_url, 1, "ayon-test-reader")
        try:
            first = await reader.fetch_text("SELECT pg_backend_pid()::text")
            database.fetchone("SELECT pg_terminate_backend(%s)", (int(first),))
            wait_for(lambda: not database.fetchone(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (int(first),))[0], 10, "the backend to end")
            second = await reader.fetch_text("SELECT pg_backend_pid()::text")
            assert second != first
        finally:
            reader.close()

    run(scenario())


def test_a_statement_that_fails_on_a_live_connection_runs_once(database, database_url):
    # Only a connection that died is retried; a timeout on a live one is the caller's error.
    database.execute("CREATE SEQUENCE runs")
    url = database_url + "?options=-c%20statement_timeout%3D200"

    async def scenario():
        reader = AsyncReader(url, 1)
        try:
            with pytest.raises(psycopg2.errors.QueryCanceled):
                await reader.fetch_text("SELECT CASE WHEN nextval('runs') > 0 THEN pg_sleep(5)::text END")
        finally:
            reader.close()

    run(scenario())
    assert database.fetchone("SELECT last_value FROM runs")[0] == 1


def test_a_failed_or_cancelled_statement_frees_its_connection(database_url):
    async def scenario():
        reader = AsyncReader(database_url, 1)
        try:
            with pytest.raises(psycopg2.errors.DivisionByZero):
                await reader.fetch_text("SELECT (1/0)::text")
            slow = asyncio.ensure_future(reader.fetch_text("SELECT pg_sleep(30)::text"))
            await asyncio.sleep(0)  # let it take the only connection
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(slow), 0.3)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            # The one slot is free again, on a fresh session.
            assert await asyncio.wait_for(reader.fetch_text("SELECT 'after'"), 10) == "after"
        finally:
            reader.close()

    run(scenario())


def test_concurrent_callers_share_size_connections(database_url):
    async def scenario():
        reader = AsyncReader(database_url, 3)
        try:
            pids = await asyncio.gather(*(reader.fetch_text("SELECT pg_backend_pid()::text FROM pg_sleep(0.01)")
                                          for _ in range(30)))
            assert len(pids) == 30 and 1 <= len(set(pids)) <= 3
        finally:
            reader.close()

    run(scenario())


def test_an_unreachable_server_is_an_operational_error():
    url = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/postgres"

    async def scenario():
        reader = AsyncReader(url, 1)
        for _ in range(2):  # the slot comes back after a failure
            with pytest.raises(psycopg2.OperationalError):
                await reader.fetch_text("SELECT 'x'")

    run(scenario())


def test_the_urls_own_session_options_are_kept(database_url):
    url = database_url + "?options=-c%20application_name%3Dfrom-url%20-c%20search_path%3Dpublic,pg_catalog"

    async def scenario():
        reader = AsyncReader(url, 1, "ayon-test-reader")
        try:
            return await reader.fetch_text(
                "SELECT current_setting('search_path') || ' ' || current_setting('TimeZone')")
        finally:
            reader.close()

    assert run(scenario()) == "public,pg_catalog UTC"
