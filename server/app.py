"""The falcon ASGI app: `create_app` wires routes and middleware; `get_app` reads settings for gunicorn."""

import hmac
import hashlib
import logging

import falcon
import falcon.asgi

from server.api import health
from server.api.common import AppContext, dumps
from server.db import BROKEN, Database

log = logging.getLogger("ayon.server")

# Every area of the API; each module has register(app, ctx).
AREAS = [health]

PUBLIC_API = ("/api/info",)


class Auth:
    """Bearer admin token on /api/ (but /api/info); compared in constant time."""

    def __init__(self, ctx):
        self.ctx = ctx

    def token_ok(self, token: str) -> bool:
        configured = self.ctx.settings.admin_token
        if configured:
            return hmac.compare_digest(token.encode(), configured.encode())
        stored = self._stored_hash()
        candidate = hashlib.sha256(token.encode()).hexdigest()
        return stored is not None and hmac.compare_digest(candidate, stored)

    def _stored_hash(self):
        row = self.ctx.db.fetchone("SELECT value FROM secrets WHERE name = 'admin_token_sha256'")
        return row[0] if row else None

    async def process_request(self, req, resp):
        if not req.path.startswith("/api/") or req.path in PUBLIC_API:
            return
        header = req.get_header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise falcon.HTTPUnauthorized(
                title="Authentication required",
                description="send the admin token as 'Authorization: Bearer <token>'",
                challenges=["Bearer"],
            )
        if not await self.ctx.run(self.token_ok, token.strip()):
            raise falcon.HTTPUnauthorized(title="Invalid token", description="the admin token is not valid",
                                          challenges=["Bearer"])


class SchemaGate:
    """Until setup has made the schema current, the API answers 503 with Retry-After."""

    def __init__(self, ctx):
        self.ctx = ctx

    async def process_request(self, req, resp):
        if not req.path.startswith("/api/") or req.path in PUBLIC_API:
            return
        if self.ctx.schema is not None and self.ctx.schema.current:
            return
        ready, reason = await self.ctx.run(health.is_ready, self.ctx)
        if not ready:
            raise falcon.HTTPServiceUnavailable(
                title="Not ready", description=f"the server is not ready yet: {reason}",
                retry_after=int(health.READY_RETRY_AFTER),
            )


def _error_serializer(req, resp, exc: falcon.HTTPError) -> None:
    # One JSON error shape for every 4xx/5xx.
    resp.content_type = falcon.MEDIA_JSON
    resp.text = dumps({"error": {"status": exc.status_code, "title": exc.title, "description": exc.description}})


async def _database_down(req, resp, exc, params):
    raise falcon.HTTPServiceUnavailable(
        title="Database unavailable", description="PostgreSQL is not reachable; retry shortly", retry_after=5
    )


async def _unexpected(req, resp, exc, params):
    if isinstance(exc, falcon.HTTPError):
        raise exc
    log.exception("unhandled error on %s %s", req.method, req.path)
    raise falcon.HTTPInternalServerError(title="Internal error", description="see the server log")


def create_app(ctx: AppContext) -> falcon.asgi.App:
    app = falcon.asgi.App(middleware=[SchemaGate(ctx), Auth(ctx)])
    app.req_options.strip_url_path_trailing_slash = True
    app.set_error_serializer(_error_serializer)
    app.add_error_handler(Exception, _unexpected)
    for exc_type in BROKEN:
        app.add_error_handler(exc_type, _database_down)
    for area in AREAS:
        area.register(app, ctx)
    return app


def get_app() -> falcon.asgi.App:
    """The app for gunicorn, from the environment's settings."""
    from procs.common import start

    settings, _ = start("server")
    ctx = AppContext(settings=settings, db=Database(settings.postgres_url, settings.db_pool_size, "ayon-server"))
    return create_app(ctx)
