"""GET /api/openapi.json: one OpenAPI 3.1 document merged from every area's description.

Each module in server.app.AREAS may describe its routes with an `OPENAPI`
dict (or an `openapi()` function) of paths, and its shared schemas with
`SCHEMAS` (or `schemas()`). What every route has in common is added here once:
the bearer token and its 401 under /api/, the error responses (400, 404 on
paths with parameters, 411/413 with a body, 500, 503) and the error shape.
"""

import copy
import json

from server.core import VERSION
from server.api.common import check_params

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["status", "title"],
        "properties": {"status": {"type": "integer"}, "title": {"type": "string"},
                       "description": {"type": ["string", "null"]}},
    }},
}

COMMON_RESPONSES = {
    "BadRequest": "An unknown query parameter, a malformed value or body; the description names it.",
    "Unauthorized": "No admin token, or not the right one.",
    "NotFound": "Nothing at this path.",
    "LengthRequired": "A body was sent without Content-Length.",
    "PayloadTooLarge": "The request body is larger than this route accepts.",
    "InternalError": "A bug; details are in the server log, never in the response.",
    "Unavailable": "Not ready yet (the schema is not current) or PostgreSQL is unreachable; see Retry-After.",
}

PUBLIC = ("/api/info",)
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/responses/{name}"}


def _part(module, name: str) -> dict:
    value = getattr(module, name.lower(), None)
    if callable(value):
        return value()
    return getattr(module, name, None) or {}


def _complete(path: str, method: str, operation: dict) -> dict:
    operation = copy.deepcopy(operation)
    operation.setdefault("operationId", method + path.replace("/", "_").replace("{", "").replace("}", ""))
    responses = operation.setdefault("responses", {})
    responses.setdefault("400", _ref("BadRequest"))
    if "{" in path:
        responses.setdefault("404", _ref("NotFound"))
    if "requestBody" in operation:
        responses.setdefault("411", _ref("LengthRequired"))
        responses.setdefault("413", _ref("PayloadTooLarge"))
    if path.startswith("/api/") and path not in PUBLIC:
        operation.setdefault("security", [{"bearer": []}])
        responses.setdefault("401", _ref("Unauthorized"))
    responses.setdefault("500", _ref("InternalError"))
    responses.setdefault("503", _ref("Unavailable"))
    return operation


def build(areas) -> dict:
    """The whole document from the areas' descriptions."""
    paths: dict = {}
    schemas = {"Error": ERROR_SCHEMA}
    for module in areas:
        for path, operations in _part(module, "OPENAPI").items():
            entry = paths.setdefault(path, {})
            for method, operation in operations.items():
                entry[method] = _complete(path, method, operation) if method in METHODS else operation
        schemas.update(_part(module, "SCHEMAS"))
    return {
        "openapi": "3.1.0",
        "info": {"title": "AYON server API", "version": VERSION,
                 "description": "Everything under /api/ except /api/info needs 'Authorization: Bearer <token>'. "
                                "Every error is {\"error\": {\"status\", \"title\", \"description\"}}."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "responses": {name: _error(text) for name, text in COMMON_RESPONSES.items()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "The admin token (AYON_ADMIN_TOKEN)."}},
        },
    }


class OpenAPI:
    def __init__(self, ctx):
        self.ctx = ctx
        self.text = None  # built once per worker: the areas do not change while it runs

    async def on_get(self, req, resp):
        check_params(req, set())
        if self.text is None:
            self.text = json.dumps(build(self.ctx.areas))
        resp.text = self.text
        resp.content_type = "application/json"


def register(app, ctx) -> None:
    app.add_route("/api/openapi.json", OpenAPI(ctx))


OPENAPI = {
    "/api/openapi.json": {
        "get": {
            "summary": "This document",
            "tags": ["meta"],
            "responses": {"200": {"description": "The OpenAPI 3.1 description of every route",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}},
        }
    }
}
