"""GET /api/maintenance (configuration, next run, last runs), POST /api/maintenance/run (a run or a dry run),
GET /api/maintenance/preview (what a run would remove, under the stored or a candidate configuration)."""


import falcon

from maintenance import preview, registry
from server.api.common import dumps
from server.api.events import EVENT
from server.api.spec import Body, Field, Query, Reply, operation
from server.core import config, events, times
from server.core.errors import ConfigError
from server.core.values import Boolean, Integer, ListOf, Text, Timestamp, Uuid

LAST_RUNS = 10
PREVIEW_TIMEOUT = 70  # a dry run's statements may take preview.STATEMENT_TIMEOUT (60 s)


def overview(db, last: int) -> dict:
    """The maintenance configuration, the next scheduled run, the running and the last runs (times written by dumps)."""
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
        "next_run": times.next_run(times.utc_now(), section.time, section.timezone) if section.enabled else None,
        "tasks": tasks,
        "running": running[0] if running else None,
        "pending_requests": [p["id"] for p in pending],
        "last_runs": last_runs,
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


OVERVIEW = {
    "type": "object",
    "required": ["enabled", "time", "timezone", "next_run", "tasks", "running", "last_runs"],
    "properties": {
        "enabled": {"type": "boolean"},
        "time": {"type": "string", "example": "03:00"},
        "timezone": {"type": "string"},
        "next_run": {**Timestamp().schema(), "type": ["string", "null"]},
        "tasks": {"type": "array", "items": {"type": "object"}},
        "running": {"oneOf": [EVENT, {"type": "null"}]},
        "pending_requests": {"type": "array", "items": Uuid().schema()},
        "last_runs": {"type": "array", "items": EVENT},
    },
}


def _task_names(names: list[str] | None) -> list[str] | None:
    """Known task names in the registry's order, each once; an unknown one is a 400 naming it."""
    if names is None:
        return None
    known = [t.name for t in registry.tasks()]
    for name in names:
        if name not in known:
            raise falcon.HTTPBadRequest(
                title="Unknown task", description=f"'tasks': unknown task '{name}'; known tasks: {', '.join(known)}"
            )
    return sorted(set(names), key=known.index)


def dry_run(db, names: list[str] | None, candidate: dict | None, record: bool) -> dict:
    """Count what a run would remove under the stored configuration, or with `candidate` (a patch) merged in.

    No lock is taken, so a real run is never kept waiting. `record`: store it as a
    `server.maintenance.preview` event (POST); the GET preview stores nothing.
    """
    with db.transaction() as cur:
        stored = config.get(cur)
    cfg = stored
    if candidate:
        try:
            merged, _ = config.merge(stored.as_dict(), candidate)
        except ConfigError as exc:
            raise falcon.HTTPBadRequest(title="Invalid candidate configuration", description=str(exc)) from None
        cfg = config.View(merged)
    result = preview.count(db, cfg, names)
    result["candidate"] = candidate
    if record:
        result["id"] = preview.record(db, result, "api", names, candidate)
    return result


# The candidate values GET /api/maintenance/preview takes: every task's switch and options, read from the
# task registry (a new task or option is a new parameter), named `<task>.<option>`. Time limits change nothing
# a run removes, so they are not among them.
TASK_KEYS = "maintenance.tasks."
CANDIDATES = tuple(
    Query(field.name[len(TASK_KEYS):], field.kind, f"Candidate value of {field.name}: {field.help}")
    for field in registry.config_fields() if not field.name.endswith(".max_minutes")
)


def candidate_patch(query) -> dict | None:
    """The given candidate parameters as a configuration patch, or None."""
    tasks: dict = {}
    for param in CANDIDATES:
        value = query.get(param.name)
        if value is not None:
            task, option = param.name.split(".", 1)
            tasks.setdefault(task, {})[option] = value
    return {"maintenance": {"tasks": tasks}} if tasks else None


PREVIEW = {
    "type": "object",
    "required": ["dry_run", "tasks", "rows_total", "bytes_estimate_total"],
    "properties": {
        "id": {**Uuid().schema(), "description": "The dry run's `server.maintenance.preview` event (POST only)."},
        "dry_run": {"type": "boolean"},
        "rows_total": {"type": "integer"},
        "bytes_estimate_total": {"type": "integer"},
        "duration_s": {"type": "number"},
        "candidate": {"type": ["object", "null"]},
        "tasks": {"type": "array", "items": {
            "type": "object", "required": ["name", "enabled", "rows", "bytes_estimate"],
            "properties": {"name": {"type": "string"}, "enabled": {"type": "boolean"},
                           "description": {"type": "string"}, "rows": {"type": ["integer", "null"]},
                           "bytes_estimate": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]}}}},
    },
}


class PreviewResource:
    def __init__(self, ctx):
        self.ctx = ctx

    @operation("What a maintenance run would remove now, under the stored or a candidate configuration",
               tags=["maintenance"],
               description="Counts rows (and estimates bytes) per enabled task without changing anything and "
                           "without taking the maintenance lock. Each `<task>.<option>` parameter is a candidate "
                           "value, e.g. `remove_old_events.retention_days=30`: the answer is what a run would "
                           "remove if it were saved. Nothing is recorded; POST /api/maintenance/run with "
                           "`dry_run` records the dry run as an event.",
               query=[Query("tasks", ListOf(Text(max_length=100), min_items=1), "Only these tasks (comma-separated)."),
                      *CANDIDATES],
               responses={200: Reply("Rows and estimated bytes per task", PREVIEW)})
    async def on_get(self, req, resp):
        query = req.context.query
        names = _task_names(query.get("tasks"))
        result = await self.ctx.run(dry_run, self.ctx.db.bounded(PREVIEW_TIMEOUT), names, candidate_patch(query), False)
        resp.content_type = falcon.MEDIA_JSON
        resp.text = dumps(result)


class Maintenance:
    def __init__(self, ctx):
        self.ctx = ctx

    @operation("Maintenance configuration, next scheduled run, running and last runs", tags=["maintenance"],
               query=[Query("last", Integer(1, 100), "How many of the last runs.", LAST_RUNS)],
               responses={200: Reply("The maintenance overview", OVERVIEW)})
    async def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_JSON
        resp.text = dumps(await self.ctx.run(overview, self.ctx.db, req.context.query["last"]))


class Run:
    def __init__(self, ctx):
        self.ctx = ctx

    @operation("Ask a maintenance daemon to run the procedure now, or count what it would remove (dry run)",
               tags=["maintenance"],
               body=Body("Which tasks; without a body, every enabled one", required=False, fields=[
                   Field("tasks", ListOf(Text(max_length=100), min_items=1), "Task names, in any order."),
                   Field("dry_run", Boolean(), "Only count what the tasks would remove, at once and without the "
                                               "maintenance lock; recorded as a server.maintenance.preview event."),
               ], example={"tasks": ["vacuum"]}),
               responses={202: Reply("The request, an event of topic server.maintenance.request", {
                   "type": "object", "required": ["id", "status"],
                   "properties": {"id": Uuid().schema(), "status": {"type": "string"}, "created": {"type": "boolean"}},
               }), 200: Reply("The dry run's counts (with `dry_run`)", PREVIEW)})
    async def on_post(self, req, resp):
        names = _task_names(req.context.body.get("tasks"))
        if req.context.body.get("dry_run"):
            result = await self.ctx.run(dry_run, self.ctx.db.bounded(PREVIEW_TIMEOUT), names, None, True)
            resp.location = f"/api/events/{result['id']}"
            resp.content_type = falcon.MEDIA_JSON
            resp.text = dumps(result)
            return
        event_id, created = await self.ctx.run(request_run, self.ctx.db, names)
        resp.status = falcon.HTTP_202
        resp.location = f"/api/events/{event_id}"
        resp.media = {"id": event_id, "status": "pending", "created": created}
