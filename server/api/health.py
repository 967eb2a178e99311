"""Liveness, readiness and /api/info."""

import asyncio
import json
import os
import time
import weakref

import falcon

from server import drain
from server.api.spec import Reply, operation
from server.core import VERSION, migrations
from server.core.db import BROKEN, PROBE_TIMEOUT, storage_full
from server.core.errors import DatabaseUnavailable, first_line
from server.core.program import setup_pending

READY_RETRY_AFTER = "5"
TAGS = ["health"]
STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"},
                                                                   "reason": {"type": "string"}}}
INFO = {
    "type": "object",
    "required": ["version", "instance_id", "roles", "schema_version", "schema_current", "uptime_seconds"],
    "properties": {
        "version": {"type": "string"}, "instance_id": {"type": "string"},
        "roles": {"type": "array", "items": {"type": "string"}},
        "schema_version": {"type": ["integer", "null"], "description": "The database's: its highest applied migration."},
        "code_schema_version": {"type": "integer", "description": "This code's: the highest migration it knows."},
        "schema_current": {"type": "boolean"},
        "uptime_seconds": {"type": "number"}, "pid": {"type": "integer"},
    },
}


class Live:
    public = True  # probes carry no token

    # Probes add parameters of their own: not strict, like every public route.
    @operation("The process answers", tags=TAGS, strict=False, responses={200: Reply("Alive", STATUS)})
    async def on_get(self, req, resp):
        resp.media = {"status": "alive"}


class Ready:
    """503 until the database answers and the schema is current, and again once the server drains (server/drain.py)."""

    public = True  # probes carry no token

    def __init__(self, ctx):
        self.ctx = ctx

    @operation("The database answers and the schema is current", tags=TAGS, strict=False, responses={
        200: Reply("Ready", STATUS),
        503: Reply("Not ready yet (see Retry-After), or draining before a stop; the reason says why", STATUS)})
    async def on_get(self, req, resp):
        if drain.draining():
            # Before any database work: the answer must change within moments of the SIGTERM.
            resp.status = falcon.HTTP_503
            resp.media = {"status": "draining", "reason": drain.REASON}
            return
        ready, reason = await readiness(self.ctx)
        if not ready:
            resp.status = falcon.HTTP_503
            resp.set_header("Retry-After", READY_RETRY_AFTER)
        resp.media = {"status": "ready" if ready else "not ready", "reason": reason}


async def readiness(ctx) -> tuple[bool, str]:
    """is_ready within PROBE_TIMEOUT (+ a margin), whatever PostgreSQL does: a hung server is "not ready"."""
    try:
        return await asyncio.wait_for(ctx.probe(is_ready, ctx), PROBE_TIMEOUT + 0.3)
    except TimeoutError:
        return False, f"database unreachable: PostgreSQL did not answer within {PROBE_TIMEOUT:g} s"


def is_ready(ctx) -> tuple[bool, str]:
    if setup_pending(ctx.settings):
        return False, "waiting for setup to finish"  # no connection before there is a role to connect as
    try:
        status = migrations.status(ctx.db.bounded(PROBE_TIMEOUT))
    except (*BROKEN, DatabaseUnavailable) as exc:
        return False, "database unreachable: " + first_line(exc)
    ctx.schema = status  # known even when the disk is full: reads go on
    full = storage_full()
    if full is not None and status.current:
        # Reads still work, but every write that grows a file fails: not ready, and said so.
        return False, f"the database's disk is full ({full}); free space on the database server's disk"
    return status.current, status.reason


def _forked() -> None:
    # The pid is in the fixed part: a forked worker renders its own (os.getpid() on every request is a system call).
    for info in list(_INFOS):
        info._fixed = None


_INFOS: "weakref.WeakSet[Info]" = weakref.WeakSet()
os.register_at_fork(after_in_child=_forked)


class Info:
    """Version, instance, roles, schema and uptime; the cheapest answer of the API.

    Everything but the uptime is fixed once the schema is current, so that part
    of the JSON is rendered once per worker (per pid, as gunicorn forks).
    """

    public = True  # version and roles, for clients before they sign in

    def __init__(self, ctx):
        self.ctx = ctx
        self._fixed: tuple[int, str, int | None] | None = None  # (pid, JSON text up to the uptime, schema version)
        _INFOS.add(self)

    def _fixed_part(self, schema) -> str:
        # Rendered again when the database's schema moves (a newer release's setup during a rolling upgrade).
        if self._fixed is None or not (schema and schema.current) or self._fixed[2] != schema.version:
            pid = os.getpid()
            fixed = json.dumps({
                "version": VERSION,
                "instance_id": self.ctx.settings.instance_id,
                "roles": self.ctx.settings.roles,
                "schema_version": schema.version if schema else None,
                "code_schema_version": migrations.code_schema(),
                "schema_current": schema.current if schema else False,
                "pid": pid,
            })
            self._fixed = (pid, fixed[:-1] + ', "uptime_seconds": ', schema.version if schema else None)
        return self._fixed[1]

    # Not strict, so nothing runs before it on the hottest path; pollers may add cache-busting parameters.
    @operation("Version, instance, roles, schema version and uptime (no token needed)", tags=TAGS, strict=False,
               responses={200: Reply("About this server", INFO)})
    async def on_get(self, req, resp):
        schema = self.ctx.schema
        if schema is None or not schema.current:
            try:
                schema = self.ctx.schema = await self.ctx.probe(migrations.status, self.ctx.db.bounded(PROBE_TIMEOUT))
            except (*BROKEN, DatabaseUnavailable):
                schema = None
            self._fixed = None
        resp.content_type = falcon.MEDIA_JSON
        resp.text = f"{self._fixed_part(schema)}{time.time() - self.ctx.started:.3f}}}"
