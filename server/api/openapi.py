"""GET /api/openapi.json: the OpenAPI 3.1 document of the app's own routes, from each responder's declaration.

The routes come from the app's router and each operation from its
responder's `spec` (server/api/spec.py), so nothing is described twice.
What every route has in common is added here once: the bearer token and its
401 on every resource that is not public (decided on the resource, as the app
decides it), and the error responses (400, 404 on paths with parameters,
411/413/415 with a body, 500, 503) with the one error shape.
"""

import json
import re

import falcon.inspect

from server.api.common import JSON_TYPES, is_public
from server.api.spec import Reply, Shape, Upload, operation
from server.core import VERSION

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
ERROR = Shape("Error", ERROR_SCHEMA)

COMMON_RESPONSES = {
    "BadRequest": "An unknown query parameter, a malformed value or body; the description names it.",
    "Unauthorized": "No admin token, or not the right one.",
    "NotFound": "Nothing at this path.",
    "LengthRequired": "A body was sent without Content-Length.",
    "PayloadTooLarge": "The request body is larger than this route accepts.",
    "UnsupportedMediaType": "The body is not in a type this route accepts.",
    "InternalError": "A bug; details are in the server log, never in the response.",
    "Unavailable": "Not ready yet (the schema is not current) or PostgreSQL is unreachable; see Retry-After.",
}

DOCUMENTED = ("GET", "PUT", "POST", "DELETE", "PATCH")  # HEAD is answered wherever GET is, not described twice


def _walk(app):
    """(URI template, resource, {method: responder}) of every routed resource, for the methods it answers itself.

    The routes and their responders' names come from falcon.inspect (public);
    the resource objects, whose responders carry their specs, from what
    `server.app.App.add_route` recorded: inspect only names their classes.
    """
    found = []
    for route in falcon.inspect.inspect_routes(app):
        resource = app.resources[route.path]
        own = {info.method: getattr(resource, info.function_name) for info in route.methods if not info.internal}
        found.append((route.path, resource, own))
    return sorted(found, key=lambda item: item[0])


def routes(app) -> list[tuple[str, object, tuple[str, ...]]]:
    """Every route of the app from its router: (URI template, resource, methods it answers itself)."""
    return [(template, resource, tuple(sorted(own))) for template, resource, own in _walk(app)]


def responders(app) -> list[tuple[str, str, object]]:
    """Every (URI template, method, responder) the app's router holds, for the methods resources answer themselves."""
    return [(template, method, own[method]) for template, _, own in _walk(app) for method in sorted(own)]


def _resolve(value, shapes: dict):
    """A copy of a schema with each Shape replaced by its reference, the shape itself kept in `shapes`."""
    if isinstance(value, Shape):
        if value.name not in shapes:
            shapes[value.name] = {}  # taken, in case a shape refers to itself
            shapes[value.name] = _resolve(value.schema() if callable(value.schema) else value.schema, shapes)
        return {"$ref": f"#/components/schemas/{value.name}"}
    if isinstance(value, dict):
        return {key: _resolve(item, shapes) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_resolve(item, shapes) for item in value]
    return value


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/responses/{name}"}


def _reply(status: int, reply, shapes: dict) -> dict:
    if isinstance(reply, str):
        # Every error has the one shape; a success described in words has no body (304).
        reply = Reply(reply, ERROR if status >= 400 else None)
    found = {"description": reply.help}
    if reply.schema is not None:
        found["content"] = {reply.media: {"schema": _resolve(reply.schema, shapes)}}
    return found


def _body(spec_body, resource, shapes: dict) -> dict:
    if isinstance(spec_body, Upload):
        types = getattr(resource, "accepts", JSON_TYPES)
        return {"description": spec_body.help, "required": True,
                "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in types}}
    media = {"schema": _resolve(spec_body.schema(), shapes)}
    if spec_body.example is not None:
        media["example"] = spec_body.example
    return {"description": spec_body.help, "required": spec_body.required, "content": {"application/json": media}}


def describe(path: str, method: str, resource, spec, shapes: dict) -> dict:
    """One operation of the document, from the responder's declaration and its resource."""
    found = {"summary": spec.summary,
             "operationId": method.lower() + path.replace("/", "_").replace("{", "").replace("}", "")}
    if spec.description:
        found["description"] = spec.description
    if spec.tags:
        found["tags"] = list(spec.tags)
    parameters = [param.document() for param in (*spec.path, *spec.query, *spec.headers)]
    if parameters:
        found["parameters"] = parameters
    if spec.body is not None:
        found["requestBody"] = _body(spec.body, resource, shapes)
    responses = {str(status): _reply(status, reply, shapes) for status, reply in spec.responses.items()}
    responses.setdefault("400", _ref("BadRequest"))
    if "{" in path:
        responses.setdefault("404", _ref("NotFound"))
    if spec.body is not None:
        for status, name in (("411", "LengthRequired"), ("413", "PayloadTooLarge"), ("415", "UnsupportedMediaType")):
            responses.setdefault(status, _ref(name))
    if not is_public(resource):
        found["security"] = [{"bearer": []}]
        responses.setdefault("401", _ref("Unauthorized"))
    responses.setdefault("500", _ref("InternalError"))
    responses.setdefault("503", _ref("Unavailable"))
    found["responses"] = dict(sorted(responses.items()))
    return found


def build(app) -> dict:
    """The whole document, from the app's routes and their responders' declarations."""
    paths: dict = {}
    shapes: dict = {}
    for template, resource, own in _walk(app):
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", template)  # {path:path} is {path} in OpenAPI
        for method in DOCUMENTED:
            spec = getattr(own.get(method), "spec", None)
            if spec is not None:
                paths.setdefault(path, {})[method.lower()] = describe(path, method, resource, spec, shapes)
    return {
        "openapi": "3.1.0",
        "info": {"title": "AYON server API", "version": VERSION,
                 "description": "Everything under /api/ except /api/info needs 'Authorization: Bearer <token>'. "
                                "Every error is {\"error\": {\"status\", \"title\", \"description\"}}. "
                                "Every time is RFC 3339 in UTC, such as 2026-01-31T12:00:00.000000Z."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": shapes,
            "responses": {name: _reply(400, text, shapes) for name, text in COMMON_RESPONSES.items()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "The admin token (AYON_ADMIN_TOKEN)."}},
        },
    }


class OpenAPI:
    def __init__(self, app):
        self.app = app
        self.text = None  # built once per worker: the routes do not change while it runs

    @operation("This document", tags=["meta"], responses={
        200: Reply("The OpenAPI 3.1 description of every route", {"type": "object"})})
    async def on_get(self, req, resp):
        if self.text is None:
            self.text = json.dumps(build(self.app))
        resp.text = self.text
        resp.content_type = "application/json"
