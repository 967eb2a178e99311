"""GET and PATCH /api/config: the server configuration, merge-updated and validated by its declaration.

Secret keys are write-only: the API answers with `config.MASK` in their place, and a change that
sends that mask back leaves them as they are.
"""

import falcon

from server.api.spec import Body, Reply, Shape, operation
from server.core import config
from server.core.errors import ConfigError

WHO = "admin (API)"


def _schema() -> dict:
    """The configuration document's JSON schema, from the same declaration that validates it."""
    root: dict = {"type": "object", "properties": {}, "additionalProperties": False}
    for field in config.fields():
        node = root
        *parents, leaf = field.name.split(".")
        for key in parents:
            node = node["properties"].setdefault(
                key, {"type": "object", "properties": {}, "additionalProperties": False})
        described = field.help + (f" Write-only: read as {config.MASK!r} when set; {config.MASK!r} in a change "
                                   "keeps it." if field.secret else "")
        node["properties"][leaf] = {"description": described, **field.kind.schema()}
    return root


# Built when the document is: maintenance tasks add their own options to the declaration.
CONFIG = Shape("Config", _schema)


def _get(db) -> dict:
    with db.transaction() as cur:
        return config.answered(config.get(cur).as_dict())


def _update(db, patch) -> dict:
    with db.transaction() as cur:
        merged, _ = config.update(cur, config.keeping_secrets(patch), WHO)
    return config.answered(merged)


class Config:
    def __init__(self, ctx):
        self.ctx = ctx

    @operation("The server configuration", tags=["configuration"],
               responses={200: Reply("The whole configuration, defaults filled in", CONFIG)})
    async def on_get(self, req, resp):
        resp.media = await self.ctx.run(_get, self.ctx.db)

    @operation("Change part of the server configuration", tags=["configuration"],
               description="A merge update: only the keys given change. Every change dispatches a "
                           "server.config_changed event naming who changed what. A bad key or value is a 400 "
                           "naming it, and nothing changes.",
               body=Body("The keys to change", shape=CONFIG, example={"maintenance": {"time": "04:00"}}),
               responses={200: Reply("The whole configuration after the change", CONFIG)})
    async def on_patch(self, req, resp):
        try:
            resp.media = await self.ctx.run(_update, self.ctx.db, req.context.body)
        except ConfigError as exc:
            # The message names the key: "maintenance.time: expected HH:MM (24-hour), got '25:00'".
            raise falcon.HTTPBadRequest(title="Invalid configuration", description=str(exc)) from None
