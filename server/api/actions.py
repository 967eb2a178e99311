"""Webactions over HTTP: create, take (one winner), finish, fail, list."""

import falcon

from server.api.common import dumps
from server.api.events import EVENT
from server.api.spec import Body, Field, PathParam, Query, Reply, operation
from server.core import events, webactions
from server.core.values import AnyText, Choice, Integer, Object, Text

TAGS = ["webactions"]
# Not a UUID is no webaction either: 404 from the lookup, as for an unknown one.
ACTION_ID = PathParam("action_id", AnyText(), "The webaction's id (a UUID).")
# Short enough that a body breaking it still fits the 1 MiB body limit (a 400, not a 413).
DESCRIPTION = Text(max_length=10_000)


async def _call(ctx, fn, *args, **kwargs):
    try:
        return await ctx.run(lambda: fn(ctx.db, *args, **kwargs))
    except webactions.ActionError as exc:
        error = {404: falcon.HTTPNotFound, 409: falcon.HTTPConflict}.get(exc.status, falcon.HTTPBadRequest)
        title = {404: "Not found", 409: "Conflict"}.get(exc.status, "Invalid webaction")
        raise error(title=title, description=str(exc)) from None


def _transition(summary: str, fields: list[Field], from_status: str) -> operation:
    """The declaration of a move from `from_status`, with its optional body."""
    return operation(summary, tags=TAGS, path=[ACTION_ID], body=Body("What to record", fields, required=False),
                     responses={200: Reply("The webaction after the change", EVENT), 404: "No such webaction",
                                409: f"The webaction is not {from_status}"})


OUTCOME = [Field("summary", Object(), "What came of it, for the record."),
           Field("description", DESCRIPTION, "One line about it.")]


class Collection:
    def __init__(self, ctx):
        self.ctx = ctx

    @operation("List webactions (events of topic action.*), newest first", tags=TAGS, query=[
        Query("status", Choice(events.STATUSES), "Only webactions in this status."),
        Query("limit", Integer(1, 1000), "How many.", 100),
    ], responses={200: Reply("The webactions", {"type": "object",
                                                "properties": {"actions": {"type": "array", "items": EVENT}}})})
    async def on_get(self, req, resp):
        query = req.context.query
        found = await _call(self.ctx, webactions.listing, status=query["status"], limit=query["limit"])
        resp.text = dumps({"actions": found})

    @operation("Create a pending webaction", tags=TAGS, body=Body("The webaction", [
        Field("topic", Text(max_length=200), "action.<name>", required=True),
        Field("payload", Object(), "Whatever its taker needs."),
    ], example={"topic": "action.render", "payload": {"shot": "sh010"}}),
        responses={201: Reply("The new webaction", EVENT)})
    async def on_post(self, req, resp):
        body = req.context.body
        resp.text = dumps(await _call(self.ctx, webactions.create, body["topic"], body.get("payload") or {}))
        resp.status = falcon.HTTP_201


class Item:
    def __init__(self, ctx):
        self.ctx = ctx

    @operation("One webaction", tags=TAGS, path=[ACTION_ID],
               responses={200: Reply("The webaction", EVENT), 404: "No such webaction"})
    async def on_get(self, req, resp, action_id):
        resp.text = dumps(await _call(self.ctx, webactions.get, action_id))

    @_transition("Take a pending webaction (in_progress); of concurrent takers exactly one wins",
                 [Field("who", Text(max_length=1000), "Who takes it, for the record.")], "pending")
    async def on_post_take(self, req, resp, action_id):
        who = req.context.body.get("who") or "api"
        resp.text = dumps(await _call(self.ctx, webactions.take, action_id, who))

    @_transition("Finish an in_progress webaction", OUTCOME, "in_progress")
    async def on_post_finish(self, req, resp, action_id):
        body = req.context.body
        done = await _call(self.ctx, webactions.finish, action_id, summary=body.get("summary"),
                           description=body.get("description"))
        resp.text = dumps(done)

    @_transition("Fail a pending or in_progress webaction", OUTCOME, "pending or in_progress")
    async def on_post_fail(self, req, resp, action_id):
        body = req.context.body
        failed = await _call(self.ctx, webactions.fail, action_id, description=body.get("description"),
                             summary=body.get("summary"))
        resp.text = dumps(failed)
