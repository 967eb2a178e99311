"""Every parser of text that a client or an archive sends, and the answer it gives to text it refuses.

The request's own inputs are not listed by hand: `declared_inputs(app)` reads
every route from the app's router and every query parameter, path parameter
and header from its responders' declarations (server/api/spec.py), so a route
or a parameter added later is covered as it is added. The headers the
middleware reads itself are GATE_HEADERS; the parsers of documents, archives
and cursors are PARSERS. tests/test_untrusted_parsers.py feeds each of them
arbitrary text and structures and checks that it answers as documented here,
never with a 500 or a traceback.
"""

from dataclasses import dataclass
from typing import Any, Callable

import falcon

from server.api import addons, common, pages, stream
from server.api.openapi import responders
from server.api.spec import Param
from server.core import archive, config, packages, yamldoc
from server.core.errors import ConfigError


@dataclass(frozen=True)
class Input:
    """One text input a responder declares: where it comes from and the statuses a bad one gets."""

    route: str
    method: str
    param: Param
    refused: tuple[int, ...]

    @property
    def where(self) -> str:
        return self.param.where

    def __str__(self) -> str:
        return f"{self.method} {self.route} {self.where} {self.param.name}"


# A bad query value or header is a 400 naming it; a path segment that is no valid value is a 400, and
# one that names nothing (any text, looked up) a 404.
REFUSED = {"query": (400,), "header": (400,), "path": (400, 404)}


def declared_inputs(app) -> list[Input]:
    """Every query parameter, path parameter and header of every responder of every route, from the router.

    HEAD answered by the GET responder itself is the same input, listed once.
    """
    found, seen = [], set()
    for template, method, responder in responders(app):
        if (template, responder) in seen:
            continue
        seen.add((template, responder))
        found += [Input(template, method, param, REFUSED[param.where]) for param in _declared(responder)]
    return found


def _declared(responder) -> tuple[Param, ...]:
    spec = getattr(responder, "spec", None)
    return () if spec is None else (*spec.query, *spec.path, *spec.headers)


# The headers the app reads outside any declaration (server/app.py, the Gate), and what a bad one gets.
GATE_HEADERS = {
    "Authorization": ((401,), "anything but 'Bearer <the admin token>' is a 401 with a Bearer challenge"),
    "Content-Type": ((415,), "a body in a type its resource does not accept is a 415"),
    "Content-Length": ((400, 411, 413), "not a number is a 400, past the route's limit a 413"),
    "Transfer-Encoding": ((411, 413), "a chunked body without a Content-Length is a 411"),
}


@dataclass(frozen=True)
class Parser:
    """A parser of untrusted text: what it reads, the one exception it refuses with and what the client sees."""

    name: str
    function: Callable[..., Any]
    reads: str
    refuses_with: type[Exception]
    answer: str


PARSERS = [
    Parser("JSON body", common.parse_json, "a request body", falcon.HTTPBadRequest, "400 Invalid body"),
    Parser("cursor", pages.decode_cursor, "the cursor parameter of /api/events and /api/logs",
           falcon.HTTPBadRequest, "400 'cursor': not a cursor returned by a previous page"),
    Parser("cursor time", pages.cursor_time, "a decoded cursor's time", falcon.HTTPBadRequest,
           "400 'cursor': not a cursor returned by a previous page"),
    Parser("cursor id", pages.cursor_uuid, "a decoded cursor's event id", falcon.HTTPBadRequest,
           "400 'cursor': not a cursor returned by a previous page"),
    Parser("cursor count", pages.cursor_int, "a decoded log cursor's count of rows shown", falcon.HTTPBadRequest,
           "400 'cursor': not a cursor returned by a previous page"),
    Parser("Last-Event-ID", stream.read_last_event_id, "the header of GET /api/events/stream",
           falcon.HTTPBadRequest, "400 'Last-Event-ID': not a cursor returned by a previous page, "
                                  "before the stream starts"),
    Parser("addon file path", addons.Files._resolve, "the {path} of /addons/{name}/{version}/{path}",
           falcon.HTTPNotFound, "404 Not found"),
    Parser("zip entry name", archive._safe_path, "each entry name of an uploaded package",
           archive.UnsafeArchive, "400 Invalid package"),
    Parser("zip archive", archive.open_zip, "an uploaded package's bytes", archive.UnsafeArchive,
           "400 Invalid package"),
    Parser("package", packages.validate, "an uploaded package: its archive and package.yaml",
           packages.PackageError, "400 Invalid package (UnsafeArchive for the archive itself)"),
    Parser("YAML document", yamldoc.load, "the text of package.yaml and AYON_CONFIG_FILE", yamldoc.Refused,
           "the manifest's or the file's own answer, below"),
    Parser("manifest", packages.parse_manifest, "package.yaml", packages.PackageError, "400 Invalid package"),
    Parser("configuration document", config.validate_patch, "PATCH /api/config, the candidate values of "
           "GET /api/maintenance/preview, webhook settings included", ConfigError, "400 Invalid configuration"),
    Parser("configuration file", config.load_file, "AYON_CONFIG_FILE", ConfigError,
           "one 'Error: AYON_CONFIG_FILE …' line, exit 2"),
]
