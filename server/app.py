"""The falcon ASGI app: `create_app` wires routes and middleware; `get_app` reads settings for gunicorn."""

import logging
import time

import falcon
import falcon.asgi
import psycopg2
import psycopg2.errors

from server import metrics
from server.api import (
    actions,
    addons,
    frontend,
    health,
    instances,
    maintenance,
    openapi,
    stream,
)
from server.api import config as config_api
from server.api import events as events_api
from server.api import logs as logs_api
from server.api.common import JSON_TYPES, AppContext, BodyTimeout, dumps, is_public
from server.core import auth, layout
from server.core.db import API_LIMITS, BROKEN, Database, failure, share_storage_errors
from server.core.errors import DatabaseUnavailable, first_line, printable, shown_query
from server.core.logs import AccessLog

log = logging.getLogger("ayon.server")

# Request bodies are at most this long unless the resource says otherwise with a
# `max_body_bytes` attribute (package uploads do).
DEFAULT_MAX_BODY = 1024 * 1024


class Auth:
    """The bearer admin token on every routed resource but the public ones; compared in constant time.

    The decision is made after routing, on the resource that will answer, so no
    spelling of a path (doubled or encoded slashes, a trailing slash, HEAD)
    reaches a protected resource without the token.
    """

    def __init__(self, ctx):
        self.ctx = ctx
        self._hash = None  # setup stores the token's sha256 once; it never changes afterwards
        # AYON_ADMIN_TOKEN, read once: settings do not change in a running process.
        self._configured = ctx.settings.admin_token or ""

    def token_ok(self, token: str) -> bool:
        if self._hash is None:
            self._hash = auth.stored_hash(self.ctx.db)
        return auth.matches(token, "", self._hash)

    def check(self, req) -> str | None:
        """401 unless the request carries the admin token; the token when only the database can tell.

        With AYON_ADMIN_TOKEN set, or once the stored hash is loaded, the
        comparison needs no database and no thread: the hot path.
        """
        header = req.get_header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise falcon.HTTPUnauthorized(
                title="Authentication required",
                description="send the admin token as 'Authorization: Bearer <token>'",
                challenges=["Bearer"],
            )
        if self._configured:
            ok = auth.matches(token, self._configured, None)
        elif self._hash is not None:
            ok = self.token_ok(token)
        else:
            return token
        if not ok:
            raise self.invalid()
        return None

    async def check_stored(self, token: str) -> None:
        """The first comparison with the stored hash, which reads it from the database in a thread."""
        if not await self.ctx.run(self.token_ok, token):
            raise self.invalid()

    @staticmethod
    def invalid() -> falcon.HTTPUnauthorized:
        return falcon.HTTPUnauthorized(title="Invalid token", description="the admin token is not valid",
                                       challenges=["Bearer"])


class SchemaGate:
    """Until setup has made the schema current, the API answers 503 with Retry-After."""

    def __init__(self, ctx):
        self.ctx = ctx

    def current(self) -> bool:
        """Whether the last readiness check saw a current schema (then no request waits for one)."""
        return self.ctx.schema is not None and self.ctx.schema.current

    async def check(self) -> None:
        ready, reason = await health.readiness(self.ctx)
        if not ready:
            raise falcon.HTTPServiceUnavailable(
                title="Not ready", description=f"the server is not ready yet: {reason}",
                retry_after=int(health.READY_RETRY_AFTER),
            )


def canonical_path(req) -> None:
    """Refuse paths that name a route only after folding: empty or dot segments, encoded slashes (404).

    Authentication does not rely on this (it is decided on the routed
    resource); it keeps one spelling per resource for logs, metrics and caches.
    """
    path = req.path
    raw = req.scope.get("raw_path") or b""
    folded = "//" in path or "\\" in path or ("/." in path and any(part in (".", "..") for part in path.split("/")))
    if folded or (b"%" in raw and (b"%2f" in raw.lower() or b"%5c" in raw.lower())):
        raise falcon.HTTPNotFound(title="Not found",
                                  description="the path is not in canonical form (empty, dot or encoded segments)")


def first_checks(req) -> None:
    """What every request gets first, routed or not: its clock started, the canonical path, no NUL in the query."""
    req.context.started = time.perf_counter()
    canonical_path(req)
    query_text(req)


def content_type(req, resource) -> None:
    """A request body must come in a type its resource accepts (415): JSON unless the resource says otherwise.

    A cross-site form can only send form, multipart or text bodies, so none of
    them reaches a resource; a write without a body needs no type.
    """
    if req.method in ("GET", "HEAD", "OPTIONS"):
        return
    declared = req.get_header("Content-Type")
    if declared is None and not req.content_length:
        return
    media = (declared or "").split(";")[0].strip().lower()
    accepted = getattr(resource, "accepts", JSON_TYPES)
    if media not in accepted:
        raise falcon.HTTPUnsupportedMediaType(
            title="Unsupported content type",
            description=f"send the body as {' or '.join(accepted)}, not {media or 'an untyped body'!r}",
        )


def query_text(req) -> None:
    """A NUL character in a query parameter is a 400 naming it (PostgreSQL text cannot hold one)."""
    raw = req.query_string
    # A NUL reaches a parameter only spelled %00 (an HTTP parser refuses a bare one): most queries have neither.
    if "%00" not in raw and "\x00" not in raw:
        return
    for name, value in req.params.items():
        values = value if isinstance(value, list) else [value]
        if "\x00" in name or any("\x00" in v for v in values):
            raise falcon.HTTPBadRequest(title="Invalid query parameter",
                                        description=f"'{name}' contains a NUL character")


def body_limit(req, resource) -> None:
    """Refuse request bodies above the resource's limit before anything reads them (413)."""
    length = req.content_length
    if length is None and req.method in ("GET", "HEAD"):
        return  # the common case, without looking further
    limit = getattr(resource, "max_body_bytes", DEFAULT_MAX_BODY)
    if length is None and "chunked" in (req.get_header("Transfer-Encoding") or "").lower():
        # Without a length the limit could only be found by reading: ask for one instead.
        raise falcon.HTTPLengthRequired(
            title="Length required", description="send the request body with a Content-Length header"
        )
    if length is not None and length > limit:
        raise falcon.HTTPContentTooLarge(
            title="Request body too large",
            description=f"the request body is {length} bytes; this route accepts at most {limit} bytes",
        )


class Gate:
    """Every request's checks, in one middleware (one await per hook for falcon, instead of one per check).

    On the routed resource, first: the start time, the canonical path (404),
    no NUL in the query (400); then, unless the resource is public, a current
    schema (503) and the admin token (401), without an await unless the
    database must tell; then the body's type (415) and size (411, 413). After
    the answer: metrics and the access line, whatever raised before. Two hooks,
    not three: each is an await per request. A path no route matches skips
    the routed checks (falcon calls no `process_resource` without a resource);
    its 404 handler starts its clock.
    """

    def __init__(self, ctx, access=None):
        self.schema = SchemaGate(ctx)
        self.auth = Auth(ctx)
        self.access = access

    async def process_resource(self, req, resp, resource, params):
        first_checks(req)
        if not is_public(resource):
            if not self.schema.current():
                await self.schema.check()
            pending = self.auth.check(req)
            if pending is not None:
                await self.auth.check_stored(pending)
        content_type(req, resource)
        body_limit(req, resource)

    async def process_response(self, req, resp, resource, req_succeeded):
        """Counts every request by method, route template and status, times it, and logs an access line."""
        started = getattr(req.context, "started", None)
        if started is None:
            return
        # The route template, never the raw path: unmatched paths would make labels unbounded.
        route = req.uri_template or "(unmatched)"
        took = time.perf_counter() - started
        status = resp.status_code
        metrics.observe_request(req.method, route, status, took)
        if self.access is not None:
            # Text the client sent, shown so that it cannot forge a line or leak a credential.
            target = printable(req.path) + ("?" + shown_query(req.query_string) if req.query_string else "")
            # The peer's address (falcon's remote_addr, without building its access_route).
            client = req.scope.get("client")
            self.access.write(client[0] if client and client[0] else "-", req.method, target, status, took * 1000)


def _error_serializer(req, resp, exc: falcon.HTTPError) -> None:
    # One JSON error shape for every 4xx/5xx.
    resp.content_type = falcon.MEDIA_JSON
    resp.text = dumps({"error": {"status": exc.status_code, "title": exc.title, "description": exc.description}})


async def _database_down(req, resp, exc, params):
    # Named for what it is (not answering, disk full, read-only during a failover...), never a 500.
    status, title, description = failure(exc)
    if status == 507:
        raise falcon.HTTPError(falcon.HTTP_507, title=title, description=description, headers={"Retry-After": "30"})
    raise falcon.HTTPServiceUnavailable(title=title, description=description, retry_after=5)


async def _bad_value(req, resp, exc, params):
    # PostgreSQL refused a value the client sent (a NUL character, a number out of range...).
    detail = first_line(exc).removeprefix("ERROR:").strip()
    raise falcon.HTTPBadRequest(title="Invalid value", description=f"a value cannot be stored: {detail}")


async def _route_not_found(req, resp, exc, params):
    # No routed resource, so the gate did not run: its first checks name a folded path or a NUL in the query.
    first_checks(req)
    raise falcon.HTTPNotFound(title="Not found", description=f"no route for {req.method} {req.path}")


async def _method_not_allowed(req, resp, exc, params):
    allowed = exc.headers.get("Allow", "") if exc.headers else ""
    raise falcon.HTTPMethodNotAllowed(
        allowed.split(", ") if allowed else [], title="Method not allowed",
        description=f"{req.method} is not allowed on {req.path}; allowed: {allowed or 'none'}",
    )


async def _body_timeout(req, resp, exc, params):
    raise falcon.HTTPError(falcon.HTTP_408, title="Request timeout", description=str(exc))


async def _unexpected(req, resp, exc, params):
    if isinstance(exc, falcon.HTTPError):
        raise exc
    if isinstance(exc, ValueError) and "NUL (0x00)" in str(exc):
        # psycopg2 refuses text with a NUL character, from any client value.
        raise falcon.HTTPBadRequest(title="Invalid value",
                                    description="a text value contains a NUL character, which cannot be stored")
    log.exception("unhandled error on %s %s", req.method, req.path)
    raise falcon.HTTPInternalServerError(title="Internal error", description="see the server log")


class App(falcon.asgi.App):
    """falcon's ASGI app, answering HEAD wherever a resource answers GET, and naming its resources by route."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # URI template -> resource, for the OpenAPI document: falcon.inspect names a resource's class only.
        self.resources: dict[str, object] = {}

    def add_route(self, uri_template, resource, **kwargs):
        self.resources[uri_template] = resource
        suffix = "_" + kwargs["suffix"] if kwargs.get("suffix") else ""
        get = getattr(resource, "on_get" + suffix, None)
        if get is not None and not hasattr(resource, "on_head" + suffix):
            # falcon sends no body for HEAD, and keeps the headers GET would set.
            setattr(resource, "on_head" + suffix, get)
        super().add_route(uri_template, resource, **kwargs)


def create_app(ctx: AppContext) -> falcon.asgi.App:
    access_log = AccessLog(ctx.settings)
    app = App(middleware=[Gate(ctx, access_log)])
    app.access_log = access_log  # also written by the worker for the requests it refuses itself
    app.req_options.strip_url_path_trailing_slash = True
    app.set_error_serializer(_error_serializer)
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(falcon.HTTPRouteNotFound, _route_not_found)
    app.add_error_handler(falcon.HTTPMethodNotAllowed, _method_not_allowed)
    app.add_error_handler(psycopg2.DataError, _bad_value)
    app.add_error_handler(BodyTimeout, _body_timeout)
    for exc_type in (*BROKEN, DatabaseUnavailable, psycopg2.errors.ReadOnlySqlTransaction):
        app.add_error_handler(exc_type, _database_down)

    # Every route of the server, in one place. Each responder declares what it takes and
    # answers (server/api/spec.py); /api/openapi.json is built from this table and those.
    assets = frontend.load_assets()
    app.add_route("/", frontend.Page(assets))
    app.add_route("/static/{name}", frontend.Static(assets))
    app.add_route("/favicon.ico", frontend.Favicon(assets))
    app.add_route("/health/live", health.Live())
    app.add_route("/health/ready", health.Ready(ctx))
    app.add_route("/metrics", metrics.Metrics(ctx))
    app.add_route("/api/info", health.Info(ctx))
    app.add_route("/api/openapi.json", openapi.OpenAPI(app))
    app.add_route("/api/events", events_api.EventList(ctx))
    app.add_route("/api/events/{event_id}", events_api.EventItem(ctx))
    event_stream = stream.EventStream(ctx)
    app.add_route("/api/events/stream", event_stream)
    app.add_middleware(stream.Shutdown(event_stream))  # closes its LISTEN connection
    app.add_route("/api/config", config_api.Config(ctx))
    app.add_route("/api/logs", logs_api.Logs(ctx))
    app.add_route("/api/instances", instances.Instances(ctx))
    app.add_route("/api/maintenance", maintenance.Maintenance(ctx))
    app.add_route("/api/maintenance/run", maintenance.Run(ctx))
    app.add_route("/api/maintenance/preview", maintenance.PreviewResource(ctx))
    app.add_route("/api/actions", actions.Collection(ctx))
    action = actions.Item(ctx)
    app.add_route("/api/actions/{action_id}", action)
    app.add_route("/api/actions/{action_id}/take", action, suffix="take")
    app.add_route("/api/actions/{action_id}/finish", action, suffix="finish")
    app.add_route("/api/actions/{action_id}/fail", action, suffix="fail")
    app.add_route("/api/addons", addons.Collection(ctx))
    app.add_route("/api/addons/install-from-url", addons.FromUrl(ctx))
    app.add_route("/api/addons/{name}/{version}", addons.Item(ctx))
    app.add_route("/addons/{name}/{version}/{path:path}", addons.Files(ctx))
    return app


def get_app() -> falcon.asgi.App:
    """The app for gunicorn, from the environment's settings."""
    from server.core.program import start

    settings, _ = start("server")
    share_storage_errors(str(layout.run_dir(settings.data_dir) / "database-disk-full"))
    ctx = AppContext(settings=settings, db=Database(settings.postgres_url, settings.db_pool_size, "ayon-server",
                                                    prepare=not settings.pooled, idle=settings.db_idle_seconds,
                                                    **API_LIMITS))
    return create_app(ctx)
