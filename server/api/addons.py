"""Packages over HTTP: upload, install from a URL, list states, remove; serve installed addon files."""

import asyncio
import mimetypes
import os
from pathlib import Path

import falcon

from server.core import archive, config, layout, packages
from server import urlfetch
from server.api.common import check_params, dumps, param, read_json

MAX_PACKAGE_BYTES = 512 * 1024 * 1024
ZIP_TYPES = ("application/zip", "application/octet-stream", "application/x-zip-compressed")
CHUNK = 256 * 1024


def _bad(description: str, title: str = "Invalid package") -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(title=title, description=description)


async def _store(ctx, data: bytes, kind: str) -> dict:
    def work():
        with ctx.db.transaction() as cur:
            return packages.store(cur, data, kind)

    try:
        return await ctx.run(work)
    except packages.PackageConflict as exc:
        raise falcon.HTTPConflict(title="Package exists", description=str(exc)) from None
    except (packages.PackageError, archive.UnsafeArchive) as exc:
        raise _bad(str(exc)) from None


def _kind(req) -> str:
    check_params(req, {"kind"})
    kind = req.get_param("kind") or "addon"
    if kind not in packages.KINDS:
        raise _bad(f"'kind': expected one of {', '.join(packages.KINDS)}, got {kind!r}", "Invalid query parameter")
    return kind


async def _read_body(req) -> bytes:
    if req.content_length is not None and req.content_length > MAX_PACKAGE_BYTES:
        raise falcon.HTTPContentTooLarge(
            title="Package too large", description=f"a package may be at most {MAX_PACKAGE_BYTES} bytes"
        )
    chunks, size = [], 0
    async for chunk in req.stream:
        size += len(chunk)
        if size > MAX_PACKAGE_BYTES:
            raise falcon.HTTPContentTooLarge(
                title="Package too large", description=f"a package may be at most {MAX_PACKAGE_BYTES} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _boolean(raw: str) -> bool:
    word = raw.strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


class Collection:
    max_body_bytes = MAX_PACKAGE_BYTES  # the app's body limit for this route (uploads)
    accepts = ZIP_TYPES  # the app refuses other body types (415)

    def __init__(self, ctx):
        self.ctx = ctx

    async def on_get(self, req, resp):
        check_params(req, {"removed"})
        include_removed = param(req, "removed", _boolean, False)

        def work():
            with self.ctx.db.transaction() as cur:
                return packages.listing(cur, include_removed)

        resp.text = dumps({"packages": await self.ctx.run(work)})

    async def on_post(self, req, resp):
        kind = _kind(req)
        data = await _read_body(req)
        if not data:
            raise _bad("the body is empty; send the package's zip")
        stored = await _store(self.ctx, data, kind)
        resp.text = dumps(stored)
        resp.status = falcon.HTTP_201 if stored["created"] else falcon.HTTP_200


class FromUrl:
    """Fetch a package from a URL: public addresses only unless installer.allow_private_urls (server/urlfetch.py)."""

    def __init__(self, ctx):
        self.ctx = ctx

    def _fetch(self, url: str) -> bytes:
        with self.ctx.db.transaction() as cur:
            allow_private = config.get(cur).installer.allow_private_urls
        return urlfetch.fetch(url, MAX_PACKAGE_BYTES, allow_private=allow_private)

    async def on_post(self, req, resp):
        body = await read_json(req)
        if not isinstance(body, dict):
            raise _bad("the body must be a JSON object with url and sha256", "Invalid body")
        unknown = sorted(set(body) - {"url", "sha256", "kind"})
        if unknown:
            raise _bad(f"unknown key '{unknown[0]}'; allowed: kind, sha256, url", "Invalid body")
        url, sha256, kind = body.get("url"), body.get("sha256"), body.get("kind", "addon")
        if not isinstance(url, str) or not url.strip().lower().startswith(("http://", "https://")):
            shown = urlfetch.shown(url) if isinstance(url, str) else type(url).__name__
            raise _bad(f"'url' must be an http:// or https:// URL, got {shown}", "Invalid body")
        if not isinstance(sha256, str) or not packages.SHA256_RE.fullmatch(sha256.lower()):
            raise _bad(f"'sha256' must be 64 hexadecimal digits, got {sha256!r}", "Invalid body")
        if kind not in packages.KINDS:
            raise _bad(f"'kind' must be one of {', '.join(packages.KINDS)}, got {kind!r}", "Invalid body")
        try:
            data = await self.ctx.run(self._fetch, url)
        except urlfetch.Refused as exc:
            raise _bad(str(exc), "URL refused") from None
        except urlfetch.FetchFailed as exc:
            raise falcon.HTTPBadGateway(title="Cannot fetch the package", description=str(exc)) from None
        try:
            archive.verify_sha256(data, sha256)
        except archive.UnsafeArchive as exc:
            raise _bad(f"{urlfetch.shown(url)}: {exc}") from None
        stored = await _store(self.ctx, data, kind)
        resp.text = dumps(stored)
        resp.status = falcon.HTTP_201 if stored["created"] else falcon.HTTP_200


class Item:
    def __init__(self, ctx):
        self.ctx = ctx

    async def on_delete(self, req, resp, name, version):
        def work():
            with self.ctx.db.transaction() as cur:
                return packages.remove(cur, name, version)

        if not await self.ctx.run(work):
            raise falcon.HTTPNotFound(title="Not found", description=f"no active package {name} {version}")
        resp.text = dumps({"name": name, "version": version, "removed": True})


# An addon page runs in an opaque origin (CSP sandbox without allow-same-origin):
# it cannot read the dashboard's local storage, where the admin token is kept.
ADDON_FILE_HEADERS = {
    "Content-Security-Policy": "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Files:
    """Installed addon files from this instance's own disk; 404 until its installer has put them there.

    Public, since browsers load them in frames and tags that carry no token;
    served sandboxed (an opaque origin), so their scripts cannot read the
    dashboard's storage or call the API with its token.
    """

    public = True

    def __init__(self, ctx):
        self.ctx = ctx

    def _resolve(self, name: str, version: str, path: str) -> Path:
        missing = falcon.HTTPNotFound(title="Not found", description=f"{name} {version} has no file {path!r} here")
        if not packages.valid_name(name) or not packages.valid_version(version):
            raise missing
        base = layout.package_dir(self.ctx.settings.data_dir, "addon", name, version).resolve()
        target = (base / path).resolve()
        # resolve() follows any link and folds '..': the result must still be inside the addon.
        if not target.is_relative_to(base) or not target.is_file():
            raise missing
        return target

    async def on_get(self, req, resp, name, version, path):
        target = await self.ctx.run(self._resolve, name, version, path)
        handle = await self.ctx.run(open, target, "rb")
        self._headers(resp, target, os.fstat(handle.fileno()).st_size)
        resp.stream = _chunks(self.ctx, handle)

    async def on_head(self, req, resp, name, version, path):
        target = await self.ctx.run(self._resolve, name, version, path)
        self._headers(resp, target, (await self.ctx.run(os.stat, target)).st_size)

    @staticmethod
    def _headers(resp, target: Path, size: int) -> None:
        resp.content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        resp.content_length = size
        for header, value in ADDON_FILE_HEADERS.items():
            resp.set_header(header, value)


async def _chunks(ctx, handle):
    try:
        while chunk := await ctx.run(handle.read, CHUNK):
            yield chunk
    finally:
        await asyncio.shield(ctx.run(handle.close))


def register(app, ctx) -> None:
    app.add_route("/api/addons", Collection(ctx))
    app.add_route("/api/addons/install-from-url", FromUrl(ctx))
    app.add_route("/api/addons/{name}/{version}", Item(ctx))
    app.add_route("/addons/{name}/{version}/{path:path}", Files(ctx))


_ERR = {"description": "the problem, named", "content": {"application/json": {"schema": {"type": "object"}}}}
_PACKAGE = {"type": "object", "properties": {
    "name": {"type": "string"}, "version": {"type": "string"}, "kind": {"type": "string", "enum": list(packages.KINDS)},
    "sha256": {"type": "string"}, "size": {"type": "integer"}, "created": {"type": "boolean"}}}
_STORED = {"201": {"description": "stored; every instance installs it",
                   "content": {"application/json": {"schema": _PACKAGE}}},
           "200": {"description": "the same content was already stored",
                   "content": {"application/json": {"schema": _PACKAGE}}},
           "400": _ERR, "409": _ERR}
_NAME_VERSION = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                 {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}]

OPENAPI = {
    "/api/addons": {
        "get": {
            "summary": "Every package with its install state on each instance",
            "parameters": [{"name": "removed", "in": "query", "schema": {"type": "boolean"},
                            "description": "include removed packages"}],
            "responses": {"200": {"description": "the packages", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"packages": {"type": "array", "items": {"type": "object"}}}}}}}},
        },
        "post": {
            "summary": "Upload a package (a zip with package.yaml at its root)",
            "parameters": [{"name": "kind", "in": "query",
                            "schema": {"type": "string", "enum": list(packages.KINDS), "default": "addon"}}],
            "requestBody": {"required": True, "content": {
                t: {"schema": {"type": "string", "format": "binary"}} for t in ("application/zip",
                                                                                "application/octet-stream")}},
            "responses": {**_STORED, "413": _ERR, "415": _ERR},
        },
    },
    "/api/addons/install-from-url": {
        "post": {
            "summary": "Fetch a package from a URL, check its sha256 and store it",
            "description": "Only http and https, public addresses only (every address the host resolves to, and "
                           "every redirect) unless the configuration sets installer.allow_private_urls; credentials "
                           "in the URL are never shown back. 400 for a refused URL, 502 when the fetch fails.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["url", "sha256"], "additionalProperties": False,
                "properties": {"url": {"type": "string", "format": "uri"},
                               "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                               "kind": {"type": "string", "enum": list(packages.KINDS)}}}}}},
            "responses": {**_STORED, "502": _ERR},
        },
    },
    "/api/addons/{name}/{version}": {
        "delete": {
            "summary": "Remove a package from every instance",
            "parameters": _NAME_VERSION,
            "responses": {"200": {"description": "removed"}, "404": _ERR},
        },
    },
    "/addons/{name}/{version}/{path}": {
        "get": {
            "summary": "A file of an addon installed on this instance (no token needed)",
            "security": [],
            "parameters": _NAME_VERSION + [{"name": "path", "in": "path", "required": True,
                                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the file"}, "404": _ERR},
        },
    },
}
