"""GET /api/maintenance (configuration, next run, last runs) and POST /api/maintenance/run."""


import falcon

from maintenance import registry
from server.api.common import dumps
from server.api.events import EVENT
from server.api.spec import Body, Field, Query, Reply, operation
from server.core import config, events, times
from server.core.values import Integer, ListOf, Text, Timestamp, Uuid

LAST_RUNS = 10


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

    @operation("Ask a maintenance daemon to run the procedure now", tags=["maintenance"],
               body=Body("Which tasks; without a body, every enabled one", required=False, fields=[
                   Field("tasks", ListOf(Text(max_length=100), min_items=1), "Task names, in any order."),
               ], example={"tasks": ["vacuum"]}),
               responses={202: Reply("The request, an event of topic server.maintenance.request", {
                   "type": "object", "required": ["id", "status"],
                   "properties": {"id": Uuid().schema(), "status": {"type": "string"}, "created": {"type": "boolean"}},
               })})
    async def on_post(self, req, resp):
        names = _task_names(req.context.body.get("tasks"))
        event_id, created = await self.ctx.run(request_run, self.ctx.db, names)
        resp.status = falcon.HTTP_202
        resp.location = f"/api/events/{event_id}"
        resp.media = {"id": event_id, "status": "pending", "created": created}
