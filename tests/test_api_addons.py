"""The packages API: uploads, install from a URL, listing, removal and the served addon files."""

import hashlib
import http.server
import os
import socket
import threading

import falcon.testing
import pytest

from server import packages
from server.api import addons
from tests.apiclient import assert_error, client, make_app  # noqa: F401 (fixture)
from tests.test_archive import HOSTILE, make_zip

ZIP = {"Content-Type": "application/zip"}


def demo(version="1.0.0", extra=("web/index.html", "<h1>demo</h1>")) -> bytes:
    return make_zip([extra], manifest=f"name: demo\nversion: '{version}'\n")


def upload(client, body: bytes, **params):
    return client.simulate_post("/api/addons", body=body, headers=ZIP, params=params)


def test_upload_is_stored_once_and_requested_on_every_installer(client, database):
    for instance in ("one", "two"):
        database.execute("INSERT INTO instances (instance_id, program) VALUES (%s, 'installer')", (instance,))
    body = demo()
    first = upload(client, body)
    assert first.status_code == 201, first.text
    assert first.json == {"name": "demo", "version": "1.0.0", "kind": "addon",
                          "sha256": hashlib.sha256(body).hexdigest(), "size": len(body), "created": True}
    again = client.simulate_post("/api/addons", body=body, headers={"Content-Type": "application/octet-stream"})
    assert again.status_code == 200 and again.json["created"] is False
    assert database.fetchone("SELECT count(*) FROM package_blobs") == (1,)
    assert dict(database.fetchall("SELECT instance_id, status FROM package_installs")) == {
        "one": "pending", "two": "pending"}
    dep = upload(client, make_zip([], manifest="name: numpy\nversion: '2.1'\n"), kind="dependency_package")
    assert dep.status_code == 201 and dep.json["kind"] == "dependency_package"
    listing = client.simulate_get("/api/addons").json["packages"]
    assert [(p["name"], p["kind"], len(p["instances"])) for p in listing] == [
        ("demo", "addon", 2), ("numpy", "dependency_package", 2)]


def test_same_version_with_other_content_conflicts_until_removed(client, database):
    assert upload(client, demo()).status_code == 201
    changed = demo(extra=("web/index.html", "<h1>changed</h1>"))
    assert_error(upload(client, changed), 409, "demo 1.0.0 already exists with another content")
    assert_error(upload(client, demo(), kind="dependency_package"), 409, "already exists with another kind")
    assert client.simulate_delete("/api/addons/demo/1.0.0").json == {"name": "demo", "version": "1.0.0",
                                                                      "removed": True}
    assert client.simulate_get("/api/addons").json["packages"] == []
    removed = client.simulate_get("/api/addons", params={"removed": "true"}).json["packages"]
    assert removed[0]["active"] is False and removed[0]["removed_at"]
    replaced = upload(client, changed)
    assert replaced.status_code == 201 and replaced.json["created"] is True
    assert_error(client.simulate_delete("/api/addons/nothing/1.0"), 404, "no active package nothing 1.0")


@pytest.mark.parametrize("body, problem", [
    (make_zip([], manifest=None), "package.yaml is missing at the archive's root"),
    (make_zip([], manifest="name: demo\nversion: [1\n"), "package.yaml is not valid YAML"),
    (make_zip([], manifest="name: Demo\nversion: '1'\n"), "name 'Demo' is not a lowercase slug"),
    (make_zip([], manifest="name: demo\n"), "package.yaml has no 'version'"),
    (HOSTILE["slip"][0](), "path escapes the package ('..')"),
    (HOSTILE["symlink"][0](), "symbolic link"),
    (b"plain text, not a zip", "not a valid zip archive"),
    (b"", "the body is empty"),
])
def test_bad_packages_are_a_400_naming_the_problem(client, database, body, problem):
    assert_error(upload(client, body), 400, problem)
    assert database.fetchone("SELECT count(*) FROM package_blobs") == (0,)


def test_bad_uploads(client):
    assert_error(client.simulate_post("/api/addons", body=demo(), headers={"Content-Type": "text/plain"}), 415,
                 "application/zip", "'text/plain'")
    assert_error(upload(client, demo(), kind="plugin"), 400, "'kind'", "dependency_package")
    assert_error(upload(client, demo(), colour="red"), 400, "'colour'")
    assert_error(client.simulate_post("/api/addons", body=demo(), headers={**ZIP, "Authorization": ""}), 401)


class Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def web_root(tmp_path):
    """A local HTTP server over a folder: (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Files(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_install_from_url(client, web_root):
    root, base = web_root
    body = demo("2.0")
    (root / "demo-2.0.zip").write_bytes(body)
    sha = hashlib.sha256(body).hexdigest()
    result = client.simulate_post("/api/addons/install-from-url",
                                  json={"url": f"{base}/demo-2.0.zip", "sha256": sha.upper()})
    assert result.status_code == 201, result.text
    assert (result.json["name"], result.json["version"], result.json["sha256"]) == ("demo", "2.0", sha)
    assert_error(client.simulate_post("/api/addons/install-from-url",
                                      json={"url": f"{base}/demo-2.0.zip", "sha256": "a" * 64}),
                 400, "sha256 mismatch: expected " + "a" * 64)
    assert_error(client.simulate_post("/api/addons/install-from-url",
                                      json={"url": f"{base}/missing.zip", "sha256": sha}),
                 502, f"{base}/missing.zip: the server answered 404")
    assert_error(client.simulate_post("/api/addons/install-from-url", json={"url": "file:///etc/passwd",
                                                                            "sha256": sha}), 400, "'url'")
    assert_error(client.simulate_post("/api/addons/install-from-url", json={"url": base, "sha256": "xyz"}),
                 400, "'sha256' must be 64 hexadecimal digits")
    assert_error(client.simulate_post("/api/addons/install-from-url", json=[1]), 400, "JSON object")


def test_fetch_has_a_size_cap_and_a_timeout(web_root):
    root, base = web_root
    (root / "big.zip").write_bytes(os.urandom(5000))
    with pytest.raises(packages.PackageError, match=r"big.zip: 5000 bytes is more than the 1000 allowed"):
        addons.fetch(f"{base}/big.zip", limit=1000)
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/slow.zip"
        with pytest.raises(packages.PackageError, match=r"slow.zip: cannot fetch it \(timed out\)"):
            addons.fetch(url, timeout=0.5)


def test_served_files_stay_inside_the_addon(database_url, tmp_path):
    data_dir = tmp_path / "data"
    folder = data_dir / "addons" / "demo" / "1.0.0"
    (folder / "web").mkdir(parents=True)
    (folder / "web" / "app.js").write_text("run()")
    (data_dir / "secret.txt").write_text("TOP-SECRET")
    (folder / "web" / "link.txt").symlink_to(data_dir / "secret.txt")
    public = falcon.testing.TestClient(make_app(database_url, AYON_DATA_DIR=str(data_dir)))  # no token
    served = public.simulate_get("/addons/demo/1.0.0/web/app.js")
    assert served.status_code == 200 and served.text == "run()"
    assert served.headers["content-type"] == "text/javascript"
    for path in ("/addons/demo/1.0.0/../../../secret.txt", "/addons/demo/1.0.0/web/%2e%2e/%2e%2e/%2e%2e/secret.txt",
                 "/addons/demo/1.0.0/web/link.txt", "/addons/demo/1.0.0/web", "/addons/demo/9.9/web/app.js",
                 "/addons/Demo/1.0.0/web/app.js", "/addons/demo/1.0.0//etc/passwd"):
        result = public.simulate_get(path)
        assert result.status_code == 404, path
        assert "TOP-SECRET" not in result.text
    assert public.simulate_get("/api/addons").status_code == 401  # the API itself still needs the token
