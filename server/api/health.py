"""Liveness, readiness and /api/info."""

import os
import time

import falcon

from server import VERSION, migrations
from server.db import BROKEN

READY_RETRY_AFTER = "5"


class Live:
    async def on_get(self, req, resp):
        resp.media = {"status": "alive"}


class Ready:
    """503 until the database answers and the schema is current; then cached as ready."""

    def __init__(self, ctx):
        self.ctx = ctx

    async def on_get(self, req, resp):
        ready, reason = await self.ctx.run(is_ready, self.ctx)
        if not ready:
            resp.status = falcon.HTTP_503
            resp.set_header("Retry-After", READY_RETRY_AFTER)
        resp.media = {"status": "ready" if ready else "not ready", "reason": reason}


def is_ready(ctx) -> tuple[bool, str]:
    try:
        status = migrations.status(ctx.db)
    except BROKEN as exc:
        return False, "database unreachable: " + (str(exc).strip().splitlines() or ["no answer"])[0]
    ctx.schema = status
    return status.current, status.reason


class Info:
    def __init__(self, ctx):
        self.ctx = ctx

    async def on_get(self, req, resp):
        schema = self.ctx.schema
        if schema is None or not schema.current:
            try:
                schema = self.ctx.schema = await self.ctx.run(migrations.status, self.ctx.db)
            except BROKEN:
                schema = None
        resp.media = {
            "version": VERSION,
            "instance_id": self.ctx.settings.instance_id,
            "roles": self.ctx.settings.roles,
            "schema_version": schema.version if schema else None,
            "schema_current": schema.current if schema else False,
            "uptime_seconds": round(time.time() - self.ctx.started, 3),
            "pid": os.getpid(),
        }


def register(app, ctx) -> None:
    app.add_route("/health/live", Live())
    app.add_route("/health/ready", Ready(ctx))
    app.add_route("/api/info", Info(ctx))
