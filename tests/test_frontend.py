"""The dashboard's static files: content types, caching, no path escapes, no auth needed."""

import re

import falcon.testing
import pytest

from server.api import frontend
from server.api.common import AppContext
from server.app import create_app
from server.core import settings as settings_mod
from server.core import values
from server.core.db import Database


@pytest.fixture
def client(database_url):
    settings = settings_mod.load({"AYON_POSTGRES_URL": database_url, "AYON_ADMIN_TOKEN": "test-token"})
    db = Database(database_url, size=2)
    yield falcon.testing.TestClient(create_app(AppContext(settings=settings, db=db)))
    db.close()


def test_page_served_without_token_and_revalidated(client):
    resp = client.simulate_get("/")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert '<section id="login"' in resp.text
    etag = resp.headers["ETag"]
    again = client.simulate_get("/", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""


def test_page_links_versioned_assets_that_are_cacheable_for_good(client):
    page = client.simulate_get("/").text
    links = dict(re.findall(r'/static/([\w.-]+)\?v=([0-9a-f]{16})"', page))
    assert set(links) == {"style.css", "sse.js", "app.js"}
    resp = client.simulate_get("/static/app.js", params={"v": links["app.js"]})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert resp.headers["ETag"] == f'"{links["app.js"]}"'
    assert resp.content == (frontend.STATIC_DIR / "app.js").read_bytes()
    css = client.simulate_get("/static/style.css")
    assert css.headers["Content-Type"] == "text/css; charset=utf-8"
    # A stale or missing version must not be pinned in a cache.
    assert css.headers["Cache-Control"] == "no-cache"
    stale = client.simulate_get("/static/app.js", params={"v": "0" * 16})
    assert stale.headers["Cache-Control"] == "no-cache"


def test_head_gives_headers_without_body(client):
    resp = client.simulate_head("/static/style.css")
    assert resp.status_code == 200 and resp.content == b""
    assert int(resp.headers["Content-Length"]) == len((frontend.STATIC_DIR / "style.css").read_bytes())


@pytest.mark.parametrize("path", [
    "/static/missing.js",
    "/static/..%2Fapi%2Ffrontend.py",
    "/static/../app.py",
    "/static/%2e%2e/settings.py",
    "/static/sub/app.js",
    "/static/.hidden",
    "/static/frontend.py",
])
def test_no_file_outside_the_folder_or_unknown_is_served(client, path):
    resp = client.simulate_get(path)
    assert resp.status_code == 404
    assert resp.json["error"]["status"] == 404
    assert "import" not in resp.text


def test_only_known_file_types_are_loaded(tmp_path):
    (tmp_path / "index.html").write_text('<link href="/static/a.css"><script src="/static/a.js"></script>')
    (tmp_path / "a.js").write_text("x")
    (tmp_path / "notes.txt").write_text("private")
    (tmp_path / ".env").write_text("SECRET=1")
    assets = frontend.load_assets(tmp_path)
    assert set(assets) == {"index.html", "a.js", "timezones.json"}
    page = assets["index.html"].body.decode()
    # Only existing assets get a version; a link to a missing one is left as written.
    assert f'src="/static/a.js?v={assets["a.js"].etag}"' in page and 'href="/static/a.css"' in page


def test_time_zone_names_are_the_ones_the_configuration_accepts(client):
    resp = client.simulate_get("/static/timezones.json")
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    names = resp.json
    assert names == sorted(values.time_zones())
    assert "UTC" in names and "Europe/Prague" in names and "localtime" not in names
    for name in names:
        values.TimeZone().check(name)


def test_page_scripts_never_build_html_from_data():
    for name in ("app.js", "sse.js"):
        source = (frontend.STATIC_DIR / name).read_text()
        assert "innerHTML" not in source and "insertAdjacentHTML" not in source, name
