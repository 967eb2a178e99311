"""Packages over HTTP: upload, install from a URL, list states, remove; serve installed addon files."""

import asyncio
import mimetypes
import os
from pathlib import Path

import falcon

from server import urlfetch
from server.api.common import dumps
from server.api.spec import Body, Field, PathParam, Query, Reply, Upload, operation
from server.core import archive, config, layout, packages
from server.core.errors import shown
from server.core.values import AnyText, Boolean, Choice, Text

MAX_PACKAGE_BYTES = 512 * 1024 * 1024
ZIP_TYPES = ("application/zip", "application/octet-stream", "application/x-zip-compressed")
CHUNK = 256 * 1024
TAGS = ["addons"]

PACKAGE = {"type": "object", "properties": {
    "name": {"type": "string"}, "version": {"type": "string"}, "kind": {"type": "string", "enum": list(packages.KINDS)},
    "sha256": {"type": "string"}, "size": {"type": "integer"}, "created": {"type": "boolean"}}}
STORED = {201: Reply("Stored; every instance installs it", PACKAGE),
          200: Reply("The same content was already stored", PACKAGE),
          409: "A package of this name and version exists with another content or kind"}
NAME = PathParam("name", AnyText(), "The package's name.")
VERSION = PathParam("version", AnyText(), "The package's version.")


STORE_TIMEOUT = 300


def _bad(description: str, title: str = "Invalid package") -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(title=title, description=description)


async def _store(ctx, data: bytes, kind: str) -> dict:
    def work():
        # A package of up to MAX_PACKAGE_BYTES goes in by COPY: longer than the API's usual bound.
        with ctx.db.bounded(STORE_TIMEOUT).transaction() as cur:
            return packages.store(cur, data, kind)

    try:
        return await ctx.run(work)
    except packages.PackageConflict as exc:
        raise falcon.HTTPConflict(title="Package exists", description=str(exc)) from None
    except (packages.PackageError, archive.UnsafeArchive) as exc:
        raise _bad(str(exc)) from None


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


class Collection:
    max_body_bytes = MAX_PACKAGE_BYTES  # the app's body limit for this route (uploads)
    accepts = ZIP_TYPES  # the app refuses other body types (415)

    def __init__(self, ctx):
        self.ctx = ctx

    @operation("Every package with its install state on each instance", tags=TAGS,
               query=[Query("removed", Boolean(), "Include removed packages.", False)],
               responses={200: Reply("The packages", {"type": "object", "properties": {
                   "packages": {"type": "array", "items": {"type": "object"}}}})})
    async def on_get(self, req, resp):
        include_removed = req.context.query["removed"]

        def work():
            with self.ctx.db.transaction() as cur:
                return packages.listing(cur, include_removed)

        resp.text = dumps({"packages": await self.ctx.run(work)})

    @operation("Upload a package (a zip with package.yaml at its root)", tags=TAGS,
               query=[Query("kind", Choice(packages.KINDS), "What the package is.", "addon")],
               body=Upload("The package's zip"), responses=STORED)
    async def on_post(self, req, resp):
        data = await _read_body(req)
        if not data:
            raise _bad("the body is empty; send the package's zip")
        stored = await _store(self.ctx, data, req.context.query["kind"])
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

    @operation("Fetch a package from a URL, check its sha256 and store it", tags=TAGS,
               description="Only http and https, public addresses only (every address the host resolves to, and "
                           "every redirect) unless the configuration sets installer.allow_private_urls; credentials "
                           "in the URL are never shown back. 400 for a refused URL, 502 when the fetch fails.",
               body=Body("Where the package is and what it must hash to", [
                   Field("url", Text(max_length=8192, what="an http:// or https:// URL"), "The package's URL.",
                         required=True, secret=True),  # it may carry credentials
                   Field("sha256", Text(max_length=64, pattern="[0-9a-fA-F]{64}", what="64 hexadecimal digits"),
                         "The package's sha256.", required=True),
                   Field("kind", Choice(packages.KINDS), "What the package is (default addon)."),
               ], example={"url": "https://example.com/demo-1.0.0.zip", "sha256": "0" * 64}),
               responses={**STORED, 502: "The package could not be fetched"})
    async def on_post(self, req, resp):
        body = req.context.body
        url, sha256, kind = body["url"], body["sha256"], body.get("kind", "addon")
        if not url.strip().lower().startswith(("http://", "https://")):
            raise _bad(f"'url' must be an http:// or https:// URL, got {urlfetch.shown(url)}", "Invalid body")
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

    @operation("Remove a package from every instance", tags=TAGS, path=[NAME, VERSION],
               responses={200: Reply("Removed", {"type": "object", "properties": {
                   "name": {"type": "string"}, "version": {"type": "string"}, "removed": {"type": "boolean"}}}),
                          404: "No active package of this name and version"})
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


# Browsers load these files with parameters of their own: not strict.
FILE = operation("A file of an addon installed on this instance (no token needed)", tags=TAGS, strict=False,
                 path=[NAME, VERSION, PathParam("path", AnyText(), "The file's path in the addon.")],
                 responses={200: Reply("The file", {"type": "string", "format": "binary"}, "application/octet-stream"),
                            404: "No such file here"})


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
        """The file, or a 404 for any path that names none: a NUL, a name too long or not encodable included."""
        if packages.valid_name(name) and packages.valid_version(version) and "\x00" not in path:
            base = layout.package_dir(self.ctx.settings.data_dir, "addon", name, version).resolve()
            try:
                target = (base / path).resolve()
                # resolve() follows any link and folds '..': the result must still be inside the addon.
                if target.is_relative_to(base) and target.is_file():
                    return target
            except (OSError, ValueError):  # ENAMETOOLONG, ELOOP; a lone surrogate (UnicodeEncodeError)
                pass
        raise falcon.HTTPNotFound(title="Not found", description=f"{name} {version} has no file {shown(path)} here")

    @FILE
    async def on_get(self, req, resp, name, version, path):
        target = await self.ctx.run(self._resolve, name, version, path)
        handle = await self.ctx.run(open, target, "rb")
        self._headers(resp, target, os.fstat(handle.fileno()).st_size)
        resp.stream = _chunks(self.ctx, handle)

    @FILE
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
