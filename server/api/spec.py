"""One declaration per operation, read both by the request checks and by the OpenAPI document.

A responder is declared with `@operation(...)`: its query parameters, path
parameters, headers and body, each with a kind from server/core/values.py,
and its answers. Before the responder runs, the decorator checks the request
against the declaration and hands over the converted values: path parameters
as the responder's arguments, the rest in `req.context.query`, `.headers` and
`.body`. server/api/openapi.py describes each route from the same `spec`.
"""

import functools
import json
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import falcon

from server.api.common import parse_json
from server.core.errors import first_line
from server.core.values import Invalid, Kind, reason

REFUSED = object()  # the kind takes no empty text: `?limit=` is a 400, not the default


@dataclass(frozen=True)
class Param:
    """One input sent as text; `label` is how errors name it, when not by its name."""

    name: str
    kind: Kind
    help: str
    default: Any = None
    label: str = ""
    blank: Any = field(init=False, repr=False, compare=False)

    where = "query"
    title = "Invalid query parameter"

    def __post_init__(self):
        # An empty value means "not given" where the kind takes empty text (a text filter),
        # and is malformed where it does not (a number, a time): decided once, here.
        try:
            self.kind.from_text("")
        except ValueError:
            blank = REFUSED
        else:
            blank = self.default
        object.__setattr__(self, "blank", blank)
        object.__setattr__(self, "label", self.label or self.name)

    def read(self, raw: str | list[str]) -> Any:
        if raw == "":
            if self.blank is REFUSED:
                raise self.refused("empty value")
            return self.blank
        if isinstance(raw, list):
            raise falcon.HTTPBadRequest(title=self.title, description=f"'{self.label}' given more than once")
        try:
            return self.kind.from_text(raw)
        except ValueError as exc:
            raise self.refused(first_line(exc)) from None

    def refused(self, problem: str) -> falcon.HTTPBadRequest:
        return falcon.HTTPBadRequest(title=self.title, description=f"'{self.label}': {problem}")

    def document(self) -> dict:
        schema = self.kind.schema()
        if schema.get("type") == "array":
            # As text a list is one value, its items separated by commas; described as an
            # OpenAPI array, `[]` and `[""]` would be the same request.
            schema = {"type": "string"}
        if self.default is not None:
            schema = {**schema, "default": self.default}
        return {"name": self.name, "in": self.where, "required": self.where == "path", "description": self.help,
                "schema": schema}


class Query(Param):
    """A query string parameter."""


class PathParam(Param):
    """A variable of the route's URI template."""

    where = "path"
    title = "Invalid path parameter"


class Header(Param):
    """A request header; absent means the default."""

    where = "header"
    title = "Invalid header"


@dataclass(frozen=True)
class Shape:
    """A named data shape, a component schema of the document; `schema` may be a function that builds it."""

    name: str
    schema: dict | Callable[[], dict] = field(compare=False)


@dataclass(frozen=True)
class Field:
    """One key of a JSON body; the errors about a `secret` one never quote its value."""

    name: str
    kind: Kind
    help: str
    required: bool = False
    secret: bool = False

    def read(self, value: Any) -> Any:
        try:
            return self.kind(value)
        except ValueError as exc:
            problem = first_line(exc)
            if self.secret:
                # Never quoted: what an Invalid says without it, else the text before the quote (", got ...").
                problem = reason(exc) if isinstance(exc, Invalid) else problem.partition(", got ")[0]
            # A sentence about the key: "'payload' must be an object, got [1]".
            text = (f"'{self.name}' must be {problem.removeprefix('expected ')}" if problem.startswith("expected ")
                    else f"'{self.name}': {problem}")
            raise falcon.HTTPBadRequest(title="Invalid body", description=text) from None


@dataclass(frozen=True)
class Body:
    """A JSON object body: exactly `fields`, or a document of `shape` that the responder checks.

    Not `required`, an empty body is the empty object.
    """

    help: str
    fields: tuple[Field, ...] = ()
    required: bool = True
    shape: Shape | None = None
    example: Any = None

    def __post_init__(self):
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "_declared", {f.name: f for f in self.fields})
        object.__setattr__(self, "_allowed", ", ".join(sorted(self._declared)) or "none")
        object.__setattr__(self, "_required", tuple(f.name for f in self.fields if f.required))

    def invalid(self, description: str) -> falcon.HTTPBadRequest:
        return falcon.HTTPBadRequest(title="Invalid body", description=description)

    async def read(self, req) -> dict:
        raw = await req.stream.read()
        if not raw.strip():
            if self.required:
                raise self.invalid(self.must_be())
            return {}
        found = parse_json(raw)
        if not isinstance(found, dict):
            raise self.invalid(self.must_be())
        if self.shape is not None:
            return found
        for key, value in found.items():
            known = self._declared.get(key)
            if known is None:
                raise self.invalid(f"unknown key '{key}'; allowed: {self._allowed}")
            found[key] = known.read(value)
        for name in self._required:
            if name not in found:
                raise self.invalid(f"'{name}' is required")
        return found

    def must_be(self) -> str:
        example = "" if self.example is None else f" such as {json.dumps(self.example)}"
        return f"the body must be a JSON object{example}"

    def schema(self) -> dict | Shape:
        if self.shape is not None:
            return self.shape
        found = {"type": "object", "additionalProperties": False,
                 "properties": {f.name: {"description": f.help, **f.kind.schema()} for f in self.fields}}
        required = [f.name for f in self.fields if f.required]
        return {**found, "required": required} if required else found


@dataclass(frozen=True)
class Upload:
    """A file as the body, in one of the resource's `accepts` types; the responder reads it as it comes."""

    help: str


@dataclass(frozen=True)
class Reply:
    """One answer: what it means and, when it has one, the shape of its body."""

    help: str
    schema: dict | Shape | None = None
    media: str = "application/json"


class Operation:
    """The declaration of one responder, applied as its decorator (`@operation(...)`).

    `strict`: a query parameter that is not declared is a 400. Probes, scrapes
    and browser-loaded files are not strict: their callers add parameters of
    their own.
    """

    def __init__(self, summary: str, *, tags: tuple[str, ...] = (), description: str = "",
                 query: tuple[Query, ...] = (), path: tuple[PathParam, ...] = (), headers: tuple[Header, ...] = (),
                 body: Body | Upload | None = None, responses: dict | None = None, strict: bool = True):
        self.summary, self.tags, self.description = summary, tuple(tags), description
        self.query, self.path, self.headers = tuple(query), tuple(path), tuple(headers)
        self.body, self.responses, self.strict = body, dict(responses or {}), strict
        self._declared = {q.name: q for q in self.query}
        self._allowed = ", ".join(sorted(self._declared)) or "none"
        # Shared by every request without a query string: read-only, never built per request.
        self.defaults = types.MappingProxyType({q.name: q.default for q in self.query})

    def read_query(self, params) -> dict | types.MappingProxyType:
        """The declared parameters converted, defaults for the others; O(parameters sent)."""
        if not params:
            return self.defaults
        values = dict(self.defaults)
        declared = self._declared
        for name, raw in params.items():
            param = declared.get(name)
            if param is not None:
                values[name] = param.read(raw)
            elif self.strict:
                raise falcon.HTTPBadRequest(title="Unknown query parameter",
                                            description=f"unknown query parameter '{name}'; allowed: {self._allowed}")
        return values

    def read_headers(self, req) -> dict:
        found = {}
        for header in self.headers:
            raw = req.get_header(header.name)
            found[header.name] = header.default if raw is None else header.read(raw)
        return found

    def __call__(self, responder):
        reads_query = self.strict or bool(self.query)
        path, headers = self.path, bool(self.headers)
        body = self.body if isinstance(self.body, Body) else None
        if not (reads_query or path or headers or body):
            responder.spec = self  # nothing to check: the responder runs as it is
            return responder
        read_query, read_headers = self.read_query, self.read_headers

        @functools.wraps(responder)
        async def checked(resource, req, resp, **params):
            if reads_query:
                req.context.query = read_query(req.params)
            for param in path:
                params[param.name] = param.read(params[param.name])
            if headers:
                req.context.headers = read_headers(req)
            if body is not None:
                req.context.body = await body.read(req)
            await responder(resource, req, resp, **params)

        checked.spec = self
        return checked


operation = Operation  # as it reads on a responder: @operation(...)
