"""GET and PATCH /api/config: the server configuration, merge-updated and validated by its declaration."""

import falcon

from server.core import config
from server.api.common import check_params, read_json
from server.core.errors import ConfigError

WHO = "admin (API)"


def _get(db) -> dict:
    with db.transaction() as cur:
        return config.get(cur).as_dict()


def _update(db, patch) -> dict:
    with db.transaction() as cur:
        merged, _ = config.update(cur, patch, WHO)
    return merged


class Config:
    def __init__(self, ctx):
        self.ctx = ctx

    async def on_get(self, req, resp):
        check_params(req, set())
        resp.media = await self.ctx.run(_get, self.ctx.db)

    async def on_patch(self, req, resp):
        check_params(req, set())
        patch = await read_json(req)
        if not isinstance(patch, dict):
            raise falcon.HTTPBadRequest(
                title="Invalid configuration",
                description="the request body must be a JSON object of keys to change, "
                            "such as {\"maintenance\": {\"time\": \"04:00\"}}",
            )
        try:
            resp.media = await self.ctx.run(_update, self.ctx.db, patch)
        except ConfigError as exc:
            # The message names the key: "maintenance.time: expected HH:MM (24-hour), got '25:00'".
            raise falcon.HTTPBadRequest(title="Invalid configuration", description=str(exc)) from None


def register(app, ctx) -> None:
    app.add_route("/api/config", Config(ctx))


def _schema() -> dict:
    """The configuration document's JSON schema, from the same declaration that validates it."""
    root: dict = {"type": "object", "properties": {}, "additionalProperties": False}
    for field in config.fields():
        node = root
        *parents, leaf = field.name.split(".")
        for key in parents:
            node = node["properties"].setdefault(
                key, {"type": "object", "properties": {}, "additionalProperties": False})
        node["properties"][leaf] = {"description": field.help, **field.kind.schema()}
    return root


def openapi() -> dict:
    """Built on demand: maintenance tasks add their own options to the declaration."""
    return {
        "/api/config": {
            "get": {
                "summary": "The server configuration",
                "tags": ["configuration"],
                "responses": {"200": {"description": "The whole configuration, defaults filled in",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Config"}}}}},
            },
            "patch": {
                "summary": "Change part of the server configuration",
                "description": "A merge update: only the keys given change. Every change dispatches a "
                               "server.config_changed event naming who changed what. A bad key or value is a 400 "
                               "naming it, and nothing changes.",
                "tags": ["configuration"],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Config"}}}},
                "responses": {"200": {"description": "The whole configuration after the change",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Config"}}}}},
            },
        }
    }


def schemas() -> dict:
    return {"Config": _schema()}
