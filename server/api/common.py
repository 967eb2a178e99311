"""What every resource shares: the app context, who may call it, JSON in and out."""

import asyncio
import datetime
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import falcon

from server.core import times
from server.core.aiodb import AsyncReader
from server.core.db import Database

# Request bodies are JSON unless a resource declares the types it takes in its own `accepts`.
JSON_TYPES = ("application/json",)


class BodyTimeout(Exception):
    """The request body stopped arriving (server/worker.py); the app answers 408."""


@dataclass
class AppContext:
    """The collaborators handed to every resource."""

    settings: Any
    db: Database
    started: float = field(default_factory=time.time)
    schema: Any = None  # the last SchemaStatus seen by the readiness check
    executor: ThreadPoolExecutor | None = None
    probes: ThreadPoolExecutor | None = None  # readiness and /metrics: never queued behind the API's calls
    reader: AsyncReader | None = None

    async def fetch_text(self, sql: str, params: dict | None = None, generic: bool = False) -> str | None:
        """One read-only statement's text answer, on the event loop (server/core/aiodb.py)."""
        if self.reader is None:
            # One budget with the thread pool's: the worker holds at most AYON_DB_POOL_SIZE connections.
            self.reader = AsyncReader(self.db.url, self.db.size, self.db.application_name, self.db.prepare,
                                      self.db.statement_timeout, self.db.answer_timeout,
                                      idle=self.db.idle, budget=self.db.budget)
        return await self.reader.fetch_text(sql, params, generic)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work (psycopg2) in this worker's thread pool, off the event loop."""
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=self.db.size, thread_name_prefix="db")
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def probe(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Like run, on two threads of their own: a probe answers even while every API thread waits."""
        if self.probes is None:
            self.probes = ThreadPoolExecutor(max_workers=2, thread_name_prefix="probe")
        return await asyncio.get_running_loop().run_in_executor(self.probes, fn, *args)


def is_public(resource) -> bool:
    """A resource answers without the token only when it says so itself (deny by default)."""
    return getattr(resource, "public", False) is True


def json_default(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return times.rfc3339(value)  # the one way the API writes a time
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, default=json_default)


# Deeper documents are refused before anything walks them; no body of ours nests past a few levels.
MAX_JSON_DEPTH = 32


def _bad_body(description: str) -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(title="Malformed JSON", description=description)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(raw: str) -> float:
    value = float(raw)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {raw[:40]} is out of range")
    return value


def _check_values(value: Any, depth: int = 0) -> None:
    """Depth, and text that PostgreSQL can store: no NUL character, no lone surrogate."""
    if depth > MAX_JSON_DEPTH:
        raise _bad_body(f"the document nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise _bad_body("a text value contains a NUL character (\\u0000)")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad_body("a text value contains a lone surrogate (\\ud800-\\udfff)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_values(key, depth + 1)
            _check_values(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, depth + 1)


def parse_json(raw: bytes) -> Any:
    """A request body as JSON that every consumer can handle; anything else is a 400 saying why."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise _bad_body(f"the document nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        # json's own message (with position) for syntax, ours for numbers and encodings.
        raise _bad_body(f"the request body is not valid JSON: {str(exc)[:200]}") from None
    _check_values(value)
    return value
