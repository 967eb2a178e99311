"""Webactions over HTTP: create, take (one winner), finish, fail, list."""


import falcon

from server.core import events, webactions
from server.api.common import check_params, dumps, int_between, param, parse_json
from server.api.events import EVENT_SCHEMA

# A webaction is an event: the same shape on the wire.
ACTION_SCHEMA = EVENT_SCHEMA
TYPE_NAMES = {str: "a string", dict: "an object"}
ID_PARAM = {"name": "action_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}


async def _body(req, allowed: dict[str, type]) -> dict:
    """An optional JSON object with only known keys of the right types; anything else is a 400 naming it."""
    raw = await req.stream.read()
    if not raw.strip():
        return {}
    raw = parse_json(raw)
    if not isinstance(raw, dict):
        raise falcon.HTTPBadRequest(title="Invalid body", description="the body must be a JSON object")
    for key, value in raw.items():
        if key not in allowed:
            raise falcon.HTTPBadRequest(
                title="Invalid body", description=f"unknown key '{key}'; allowed: {', '.join(sorted(allowed))}"
            )
        if not isinstance(value, allowed[key]):
            raise falcon.HTTPBadRequest(title="Invalid body", description=f"'{key}' must be {TYPE_NAMES[allowed[key]]}")
    return raw


async def _call(ctx, fn, *args, **kwargs):
    try:
        return await ctx.run(lambda: fn(ctx.db, *args, **kwargs))
    except webactions.ActionError as exc:
        error = {404: falcon.HTTPNotFound, 409: falcon.HTTPConflict}.get(exc.status, falcon.HTTPBadRequest)
        title = {404: "Not found", 409: "Conflict"}.get(exc.status, "Invalid webaction")
        raise error(title=title, description=str(exc)) from None


def _status(raw: str) -> str:
    if raw not in events.STATUSES:
        raise ValueError(f"expected one of {', '.join(events.STATUSES)}, got {raw!r}")
    return raw


def _param(req, name: str, convert, default=None):
    """Like `param`, but `?name=` with no value is a 400 rather than the default."""
    if req.params.get(name) == "":
        raise falcon.HTTPBadRequest(title="Invalid query parameter", description=f"'{name}': expected a value")
    return param(req, name, convert, default)


class Collection:
    def __init__(self, ctx):
        self.ctx = ctx

    async def on_get(self, req, resp):
        check_params(req, {"status", "limit"})
        status = _param(req, "status", _status)
        limit = _param(req, "limit", int_between(1, 1000), 100)
        resp.text = dumps({"actions": await _call(self.ctx, webactions.listing, status=status, limit=limit)})

    async def on_post(self, req, resp):
        body = await _body(req, {"topic": str, "payload": dict})
        if "topic" not in body:
            raise falcon.HTTPBadRequest(title="Invalid body", description="'topic' is required (action.<name>)")
        resp.text = dumps(await _call(self.ctx, webactions.create, body["topic"], body.get("payload") or {}))
        resp.status = falcon.HTTP_201


class Item:
    def __init__(self, ctx):
        self.ctx = ctx

    async def on_get(self, req, resp, action_id):
        resp.text = dumps(await _call(self.ctx, webactions.get, action_id))

    async def on_post_take(self, req, resp, action_id):
        body = await _body(req, {"who": str})
        resp.text = dumps(await _call(self.ctx, webactions.take, action_id, body.get("who") or "api"))

    async def on_post_finish(self, req, resp, action_id):
        body = await _body(req, {"summary": dict, "description": str})
        done = await _call(self.ctx, webactions.finish, action_id, summary=body.get("summary"),
                           description=body.get("description"))
        resp.text = dumps(done)

    async def on_post_fail(self, req, resp, action_id):
        body = await _body(req, {"summary": dict, "description": str})
        failed = await _call(self.ctx, webactions.fail, action_id, description=body.get("description"),
                             summary=body.get("summary"))
        resp.text = dumps(failed)


def register(app, ctx) -> None:
    app.add_route("/api/actions", Collection(ctx))
    item = Item(ctx)
    app.add_route("/api/actions/{action_id}", item)
    for verb in ("take", "finish", "fail"):
        app.add_route(f"/api/actions/{{action_id}}/{verb}", item, suffix=verb)


def _transition(summary: str, body_props: dict, from_status: str) -> dict:
    return {
        "post": {
            "summary": summary,
            "parameters": [ID_PARAM],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "properties": body_props}}}},
            "responses": {
                "200": {"description": "the webaction after the change",
                        "content": {"application/json": {"schema": ACTION_SCHEMA}}},
                "404": {"description": "no such webaction"},
                "409": {"description": f"the webaction is not {from_status}"},
            },
        }
    }


OPENAPI = {
    "/api/actions": {
        "get": {
            "summary": "List webactions (events of topic action.*), newest first",
            "parameters": [
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(events.STATUSES)}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            ],
            "responses": {"200": {"description": "the webactions", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"actions": {"type": "array", "items": ACTION_SCHEMA}}}}}},
                "400": {"description": "a bad query parameter"}},
        },
        "post": {
            "summary": "Create a pending webaction",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["topic"], "additionalProperties": False,
                "properties": {"topic": {"type": "string", "pattern": "^action\\..+"},
                               "payload": {"type": "object"}}}}}},
            "responses": {"201": {"description": "the new webaction",
                                  "content": {"application/json": {"schema": ACTION_SCHEMA}}},
                          "400": {"description": "a bad body"}},
        },
    },
    "/api/actions/{action_id}": {
        "get": {
            "summary": "One webaction",
            "parameters": [ID_PARAM],
            "responses": {"200": {"description": "the webaction",
                                  "content": {"application/json": {"schema": ACTION_SCHEMA}}},
                          "404": {"description": "no such webaction"}},
        }
    },
    "/api/actions/{action_id}/take": _transition(
        "Take a pending webaction (in_progress); of concurrent takers exactly one wins",
        {"who": {"type": "string"}}, "pending"),
    "/api/actions/{action_id}/finish": _transition(
        "Finish an in_progress webaction",
        {"summary": {"type": "object"}, "description": {"type": "string"}}, "in_progress"),
    "/api/actions/{action_id}/fail": _transition(
        "Fail a pending or in_progress webaction",
        {"summary": {"type": "object"}, "description": {"type": "string"}}, "pending or in_progress"),
}
