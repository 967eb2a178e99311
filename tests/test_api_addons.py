"""The packages API: uploads, install from a URL, listing, removal and the served addon files."""

import hashlib
import http.server
import threading

import falcon.testing
import pytest

from tests.apiclient import assert_error, client, gunicorn, make_app  # noqa: F401 (fixture)
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
    (make_zip([], manifest="name: demo\nversion: [1\n"), "package.yaml: not valid YAML"),
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

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def web_root(tmp_path):
    """A local HTTP server over a folder: (folder, base URL, paths it was asked for)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Files(*a, directory=str(root)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", server.requests
    server.shutdown()
    server.server_close()


def allow_private_urls(client, allowed: bool = True) -> None:
    result = client.simulate_patch("/api/config", json={"installer": {"allow_private_urls": allowed}})
    assert result.status_code == 200, result.text


def test_install_from_url(client, web_root):
    root, base, _ = web_root
    allow_private_urls(client)  # the test's server is on loopback
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


@pytest.mark.parametrize("host, words", [
    ("127.0.0.1", "127.0.0.1 is a loopback address"),
    ("2130706433", "2130706433 (127.0.0.1) is a loopback address"),
    ("0x7f.1", "0x7f.1 (127.0.0.1) is a loopback address"),
    ("[::1]", "::1 is a loopback address"),
    ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1 (::ffff:7f00:1) is a loopback address (127.0.0.1) in IPv6 form"),
])
def test_install_from_loopback_is_refused_by_default(client, database, web_root, host, words, capsys, caplog):
    root, base, requests = web_root
    body = demo("3.0")
    (root / "demo.zip").write_bytes(body)
    port = base.rsplit(":", 1)[1]
    url = f"http://alice:s3cret@{host}:{port}/demo.zip?token=t0ken"
    result = client.simulate_post("/api/addons/install-from-url",
                                  json={"url": url, "sha256": hashlib.sha256(body).hexdigest()})
    error = assert_error(result, 400, f"http://{host}:{port}/demo.zip?…: {words}", "installer.allow_private_urls")
    assert error["title"] == "URL refused"
    assert requests == []  # not a packet to the server
    assert database.fetchone("SELECT count(*) FROM packages") == (0,)
    captured = capsys.readouterr()
    for secret in ("s3cret", "t0ken", "alice"):  # neither in the answer nor in any log line
        assert secret not in result.text
        assert secret not in captured.out + captured.err + caplog.text
    assert database.fetchone("SELECT count(*) FROM events WHERE doc::text LIKE '%%s3cret%%'") == (0,)


def test_install_from_url_hides_credentials_in_every_error(client, web_root):
    root, base, _ = web_root
    allow_private_urls(client)
    body = demo("4.0")
    (root / "demo.zip").write_bytes(body)
    secret = base.replace("http://", "http://bob:hunter2@") + "/demo.zip?sig=t0ken"
    for url, sha, status in ((secret, "b" * 64, 400), (secret.replace("demo.zip", "gone.zip"), "b" * 64, 502),
                             ("ftp://bob:hunter2@example.com/x.zip", "b" * 64, 400)):
        result = client.simulate_post("/api/addons/install-from-url", json={"url": url, "sha256": sha})
        assert result.status_code == status, result.text
        assert "hunter2" not in result.text and "bob" not in result.text and "t0ken" not in result.text
    allow_private_urls(client, False)
    assert client.simulate_post("/api/addons/install-from-url", json={
        "url": secret, "sha256": hashlib.sha256(body).hexdigest()}).status_code == 400


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


def test_concurrent_first_uploads_of_one_version_give_one_201_and_409s(gunicorn):
    """Ten clients upload the same name and version with different content at once: one wins, every other is told."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.apiclient import AUTH, http

    barrier = threading.Barrier(10)

    def send(body: bytes) -> int:
        barrier.wait(10)
        return http(gunicorn.url + "/api/addons", "POST", {**AUTH, **ZIP}, body, timeout=30)[0]

    with ThreadPoolExecutor(10) as pool:
        for round_ in range(20):
            bodies = [demo(f"race.{round_}", ("web/index.html", f"<p>{n}</p>")) for n in range(10)]
            statuses = sorted(pool.map(send, bodies))
            assert statuses == [201] + [409] * 9, (round_, statuses)
