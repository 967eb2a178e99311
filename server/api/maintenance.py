"""GET /api/maintenance (configuration, next run, last runs) and POST /api/maintenance/run."""


import falcon

from maintenance import registry
from server.core import config, events, times
from server.api.common import check_params, dumps, int_between, param, parse_json

LAST_RUNS = 10


def _event(record: dict) -> dict:
    return {**record, "created_at": times.rfc3339(record["created_at"]), "updated_at": times.rfc3339(record["updated_at"])}


def overview(db, last: int) -> dict:
    """The maintenance configuration, the next scheduled run, the running and the last runs."""
    with db.transaction() as cur:
        cfg = config.get(cur)
        section = cfg.maintenance
        running = events.query(cur, topic=events.MAINTENANCE, status="in_progress", limit=1)
        pending = events.query(cur, topic=events.MAINTENANCE_REQUEST, status="pending", limit=100)
        last_runs = events.query(cur, topic=events.MAINTENANCE, limit=last)
    tasks = [
        {"name": task.name, "enabled": enabled, "description": task.describe(options), "options": options}
        for task, enabled, options in registry.plan(cfg)
    ]
    return {
        "enabled": section.enabled,
        "time": section.time,
        "timezone": section.timezone,
        "next_run": times.rfc3339(times.next_run(times.utc_now(), section.time, section.timezone))
        if section.enabled else None,
        "tasks": tasks,
        "running": _event(running[0]) if running else None,
        "pending_requests": [p["id"] for p in pending],
        "last_runs": [_event(r) for r in last_runs],
    }


def request_run(db, names: list[str] | None) -> tuple[str, bool]:
    """The id of a pending request for these tasks: an identical pending one, or a new one (True)."""
    with db.transaction() as cur:
        # One request at a time per task list: a second click must not queue a second run.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('ayon.maintenance.request'))")
        for pending in events.query(cur, topic=events.MAINTENANCE_REQUEST, status="pending", limit=100):
            if (pending["payload"] or {}).get("tasks") == names:
                return pending["id"], False
        what = ", ".join(names) if names else "all enabled tasks"
        event_id = events.dispatch(
            cur, events.MAINTENANCE_REQUEST, status="pending", description=f"maintenance run requested: {what}",
            payload={"tasks": names}, sender="api",
        )
    return event_id, True


def _task_names(body) -> list[str] | None:
    if not isinstance(body, dict):
        raise falcon.HTTPBadRequest(title="Invalid body",
                                    description="expected a JSON object such as {\"tasks\": [...]}")
    unknown = sorted(set(body) - {"tasks"})
    if unknown:
        raise falcon.HTTPBadRequest(title="Invalid body", description=f"unknown field '{unknown[0]}'; allowed: tasks")
    if "tasks" not in body:
        return None
    names = body["tasks"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise falcon.HTTPBadRequest(title="Invalid body",
                                    description="'tasks': expected a non-empty list of task names")
    known = [t.name for t in registry.tasks()]
    for name in names:
        if name not in known:
            raise falcon.HTTPBadRequest(
                title="Unknown task", description=f"'tasks': unknown task '{name}'; known tasks: {', '.join(known)}"
            )
    return sorted(set(names), key=known.index)


class Maintenance:
    def __init__(self, ctx):
        self.ctx = ctx

    async def on_get(self, req, resp):
        check_params(req, {"last"})
        last = param(req, "last", int_between(1, 100), LAST_RUNS)
        resp.content_type = falcon.MEDIA_JSON
        resp.text = dumps(await self.ctx.run(overview, self.ctx.db, last))


class Run:
    def __init__(self, ctx):
        self.ctx = ctx

    async def on_post(self, req, resp):
        check_params(req, set())
        raw = await req.stream.read()
        names = _task_names(parse_json(raw) if raw.strip() else {})
        event_id, created = await self.ctx.run(request_run, self.ctx.db, names)
        resp.status = falcon.HTTP_202
        resp.location = f"/api/events/{event_id}"
        resp.media = {"id": event_id, "status": "pending", "created": created}


def register(app, ctx) -> None:
    app.add_route("/api/maintenance", Maintenance(ctx))
    app.add_route("/api/maintenance/run", Run(ctx))


_ERROR = {"$ref": "#/components/schemas/Error"}
OPENAPI = {
    "/api/maintenance": {
        "get": {
            "summary": "Maintenance configuration, next scheduled run, running and last runs",
            "tags": ["maintenance"],
            "parameters": [
                {"name": "last", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100,
                                                            "default": LAST_RUNS}},
            ],
            "responses": {
                "200": {"description": "The maintenance overview", "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["enabled", "time", "timezone", "next_run", "tasks", "running", "last_runs"],
                    "properties": {
                        "enabled": {"type": "boolean"},
                        "time": {"type": "string", "example": "03:00"},
                        "timezone": {"type": "string"},
                        "next_run": {"type": ["string", "null"], "format": "date-time"},
                        "tasks": {"type": "array", "items": {"type": "object"}},
                        "running": {"oneOf": [{"$ref": "#/components/schemas/Event"}, {"type": "null"}]},
                        "pending_requests": {"type": "array", "items": {"type": "string"}},
                        "last_runs": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                    },
                }}}},
                "400": {"description": "Bad query parameter", "content": {"application/json": {"schema": _ERROR}}},
            },
        }
    },
    "/api/maintenance/run": {
        "post": {
            "summary": "Ask a maintenance daemon to run the procedure now",
            "tags": ["maintenance"],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {"tasks": {"type": "array", "minItems": 1, "items": {"type": "string"}}},
            }}}},
            "responses": {
                "202": {"description": "The request, an event of topic server.maintenance.request",
                        "content": {"application/json": {"schema": {
                            "type": "object", "required": ["id", "status"],
                            "properties": {"id": {"type": "string", "format": "uuid"}, "status": {"type": "string"},
                                           "created": {"type": "boolean"}},
                        }}}},
                "400": {"description": "Bad body or unknown task", "content": {"application/json": {"schema": _ERROR}}},
            },
        }
    },
}
