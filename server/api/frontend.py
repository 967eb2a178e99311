"""The dashboard: GET / and GET /static/{name}, from the files in server/static.

/static/timezones.json is made here: the time zone names the configuration accepts.

The files are read once per worker into memory and looked up by exact name, so
no request path can reach a file outside the folder. Each asset gets an ETag;
the page links its assets with `?v=<etag>` so a browser can keep a versioned
asset for a year and only revalidates the page itself.
"""

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import falcon

from server.api.spec import PathParam, Query, Reply, operation
from server.core.values import AnyText, time_zones

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PAGE = "index.html"
# The time zone names the configuration accepts, for the dashboard's picker: the validator's own list.
TIME_ZONES = "timezones.json"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}

# The page holds the admin token: only its own scripts and styles, only its own origin, never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
TAGS = ["dashboard"]
NOT_MODIFIED = "Not modified (If-None-Match)"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _asset(name: str, body: bytes) -> Asset:
    return Asset(body, CONTENT_TYPES[Path(name).suffix], hashlib.sha256(body).hexdigest()[:16])


class Assets(Mapping):
    """The assets by name. The time-zone list is made on its first request, not before readiness: reading
    the tz database takes about 30 ms of CPU, in every worker."""

    def __init__(self, files: dict[str, Asset]):
        self._files = files

    def __getitem__(self, name: str) -> Asset:
        if name == TIME_ZONES and name not in self._files:
            self._files[name] = _asset(TIME_ZONES, json.dumps(sorted(time_zones())).encode())
        return self._files[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*(name for name in self._files if name != TIME_ZONES), TIME_ZONES])

    def __len__(self) -> int:
        return len(self._files) + (TIME_ZONES not in self._files)


def load_assets(folder: Path = STATIC_DIR) -> Assets:
    """Every servable file of the folder by name, the page's asset links versioned."""
    assets = {
        path.name: _asset(path.name, path.read_bytes())
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix in CONTENT_TYPES and not path.name.startswith(".")
    }
    if PAGE in assets:
        def versioned(match: re.Match) -> str:
            name = match.group(2)
            asset = assets.get(name)
            return match.group(0) if asset is None else f'{match.group(1)}/static/{name}?v={asset.etag}"'

        page = re.sub(r'((?:src|href)=")/static/([\w.-]+)"', versioned, assets[PAGE].body.decode())
        assets[PAGE] = _asset(PAGE, page.encode())
    return Assets(assets)


def _send(req, resp, asset: Asset, cache_control: str) -> None:
    resp.content_type = asset.content_type
    resp.etag = asset.etag
    resp.cache_control = [cache_control]
    for name, value in SECURITY_HEADERS.items():
        resp.set_header(name, value)
    if req.if_none_match and any(tag == "*" or tag == asset.etag for tag in req.if_none_match):
        resp.status = falcon.HTTP_304
        return
    resp.data = asset.body  # falcon sends only its length for HEAD


class Page:
    """GET / : the dashboard page; always revalidated so a new release shows at once."""

    public = True  # the page asks for the token itself

    def __init__(self, assets: Mapping[str, Asset]):
        self.assets = assets

    # Browsers add parameters of their own (links shared with tracking tags): not strict.
    @operation("The dashboard page (HTML)", tags=TAGS, strict=False,
               responses={200: Reply("The page", {"type": "string"}, "text/html"), 304: NOT_MODIFIED})
    async def on_get(self, req, resp):
        asset = self.assets.get(PAGE)
        if asset is None:
            raise falcon.HTTPNotFound(title="Not found", description="the dashboard is not installed")
        _send(req, resp, asset, REVALIDATE)


class Static:
    """GET /static/{name}: one file of server/static by exact name."""

    public = True

    def __init__(self, assets: Mapping[str, Asset]):
        self.assets = assets

    @operation("A file of the dashboard (script, style sheet, image)", tags=TAGS, strict=False,
               path=[PathParam("name", AnyText(), "The file's name.")],
               query=[Query("v", AnyText(),
                            "The file's version; a current one makes the response cacheable for a year.")],
               responses={200: "The file", 304: NOT_MODIFIED, 404: "No such file"})
    async def on_get(self, req, resp, name: str):
        asset = self.assets.get(name)
        if asset is None:
            raise falcon.HTTPNotFound(title="Not found", description=f"no static file '{name}'")
        # Only a link carrying the current version may be kept for good.
        cache = IMMUTABLE if req.context.query["v"] == asset.etag else REVALIDATE
        _send(req, resp, asset, cache)


class Favicon:
    """GET /favicon.ico, where browsers and bookmarks look for it."""

    public = True

    def __init__(self, assets: Mapping[str, Asset]):
        self.assets = assets

    @operation("The dashboard's icon", tags=TAGS, strict=False,
               responses={200: Reply("The icon", {"type": "string"}, "image/x-icon"), 304: NOT_MODIFIED})
    async def on_get(self, req, resp):
        _send(req, resp, self.assets["favicon.ico"], "public, max-age=86400")
