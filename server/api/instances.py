"""GET /api/instances: every instance, its programs and their last heartbeat; stale ones flagged."""

from server.api.pages import fetch_text, send_json_text, utc_json
from server.api.spec import Reply, Shape, operation
from server.core import config
from server.core.values import Timestamp

# stale_after comes from the configuration (instances.stale_after).
SQL = f"""
WITH cfg AS (
    SELECT %(stale_after)s::int AS stale_after
), beats AS (
    SELECT i.*, i.last_seen < clock_timestamp() - make_interval(secs => cfg.stale_after) AS stale
    FROM instances i, cfg
)
SELECT json_build_object(
    'stale_after', (SELECT stale_after FROM cfg),
    'instances', coalesce((
        SELECT json_agg(json_build_object(
            'instance_id', instance_id,
            'stale', bool_and_stale,
            'last_seen', {utc_json('last_seen')},
            'programs', programs) ORDER BY instance_id)
        FROM (
            SELECT instance_id, bool_and(stale) AS bool_and_stale, max(last_seen) AS last_seen,
                   json_agg(json_build_object(
                       'program', program, 'pid', pid, 'hostname', hostname, 'version', version,
                       'started_at', {utc_json('started_at')}, 'last_seen', {utc_json('last_seen')},
                       'stale', stale, 'info', info) ORDER BY program) AS programs
            FROM beats GROUP BY instance_id
        ) grouped), '[]'::json)
)::text
"""


def _listing(db) -> str:
    with db.transaction() as cur:
        stale_after = config.get(cur).instances.stale_after
    return fetch_text(db, SQL, {"stale_after": stale_after})


_PROGRAM = {
    "type": "object",
    "required": ["program", "last_seen", "started_at", "stale", "info"],
    "properties": {
        "program": {"type": "string"}, "pid": {"type": ["integer", "null"]},
        "hostname": {"type": ["string", "null"]}, "version": {"type": ["string", "null"]},
        "started_at": Timestamp().schema(), "last_seen": Timestamp().schema(), "stale": {"type": "boolean"},
        "info": {"type": "object"},
    },
}

INSTANCE = Shape("Instance", {
    "type": "object",
    "required": ["instance_id", "stale", "last_seen", "programs"],
    "properties": {"instance_id": {"type": "string"}, "stale": {"type": "boolean"},
                   "last_seen": Timestamp().schema(), "programs": {"type": "array", "items": _PROGRAM}},
})


class Instances:
    def __init__(self, ctx):
        self.ctx = ctx

    @operation("Every instance and its programs", tags=["instances"],
               description="Each long-running program heartbeats every few seconds; one not seen for "
                           "instances.stale_after seconds (configuration) is stale, and an instance is stale "
                           "when all its programs are.",
               responses={200: Reply("The instances", {
                   "type": "object", "required": ["stale_after", "instances"],
                   "properties": {"stale_after": {"type": "integer"},
                                  "instances": {"type": "array", "items": INSTANCE}}})})
    async def on_get(self, req, resp):
        text = await self.ctx.run(_listing, self.ctx.db)
        send_json_text(resp, text)
