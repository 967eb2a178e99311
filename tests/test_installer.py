"""The installer program for real: several instances, hostile packages, SIGKILL mid-install."""

import hashlib
import io
import os
import zipfile

import falcon.testing
import psycopg2

from server.core import archive, packages
from tests.apiclient import AUTH, make_app
from tests.test_archive import HOSTILE, make_zip
from tests.test_webactions import Program, wait_for

DEMO = "name: demo\nversion: '1.0.0'\n"


def start_installer(env, tmp_path, instance: str) -> Program:
    data_dir = tmp_path / instance
    return Program("procs.installer", {**env, "AYON_INSTANCE_ID": instance, "AYON_DATA_DIR": str(data_dir)},
                   tmp_path / f"{instance}.log")


def states(database, name: str, version: str) -> dict:
    return dict(database.fetchall(
        "SELECT instance_id, status FROM package_installs WHERE name = %s AND version = %s", (name, version)))


def files_under(root) -> dict:
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = open(path, "rb").read()
    return found


def test_every_instance_installs_serves_and_removes_an_uploaded_addon(env, database, database_url, tmp_path):
    names = ["alpha", "beta", "gamma"]
    programs = [start_installer(env, tmp_path, n) for n in names]
    client = falcon.testing.TestClient(make_app(database_url, AYON_DATA_DIR=str(tmp_path / "alpha")), headers=AUTH)
    try:
        wait_for(lambda: database.fetchone("SELECT count(*) FROM instances WHERE program = 'installer'")[0] == 3,
                 30, "three installers' heartbeats")
        body = make_zip([("web/index.html", "<h1>demo</h1>"), ("web/app.js", "run()")], manifest=DEMO)
        result = client.simulate_post("/api/addons", body=body, headers={"Content-Type": "application/zip"})
        assert result.status_code == 201, result.text
        assert result.json["sha256"] == hashlib.sha256(body).hexdigest()
        expected = {"package.yaml": DEMO.encode(), "web/index.html": b"<h1>demo</h1>", "web/app.js": b"run()"}
        # The poll interval is 60 s: installing within seconds means NOTIFY woke them.
        wait_for(lambda: states(database, "demo", "1.0.0") == dict.fromkeys(names, "installed"), 20,
                 "three instances to install the addon")
        for n in names:
            assert files_under(tmp_path / n / "addons" / "demo" / "1.0.0") == expected

        programs.append(start_installer(env, tmp_path, "late"))
        wait_for(lambda: states(database, "demo", "1.0.0").get("late") == "installed", 30,
                 "the late instance to catch up")
        assert files_under(tmp_path / "late" / "addons" / "demo" / "1.0.0") == expected

        listing = client.simulate_get("/api/addons").json["packages"]
        assert [(p["name"], p["version"], p["kind"]) for p in listing] == [("demo", "1.0.0", "addon")]
        assert {i["instance_id"]: i["status"] for i in listing[0]["instances"]} == dict.fromkeys(
            names + ["late"], "installed")

        served = client.simulate_get("/addons/demo/1.0.0/web/index.html")
        assert served.status_code == 200 and served.text == "<h1>demo</h1>"
        assert served.headers["content-type"] == "text/html"
        elsewhere = falcon.testing.TestClient(make_app(database_url, AYON_DATA_DIR=str(tmp_path / "nowhere")))
        assert elsewhere.simulate_get("/addons/demo/1.0.0/web/index.html").status_code == 404

        assert client.simulate_delete("/api/addons/demo/1.0.0").status_code == 200
        wait_for(lambda: states(database, "demo", "1.0.0") == dict.fromkeys(names + ["late"], "removed"), 20,
                 "every instance to remove the addon")
        for n in names + ["late"]:
            assert not (tmp_path / n / "addons" / "demo").exists()
        assert client.simulate_get("/addons/demo/1.0.0/web/index.html").status_code == 404
        assert client.simulate_delete("/api/addons/demo/1.0.0").status_code == 404
    finally:
        for program in programs:
            program.terminate()
        codes = [p.stop() for p in programs]
    assert codes == [0] * len(programs), [p.output() for p in programs]


def store_raw(database, name: str, data: bytes, sha256: str | None = None) -> None:
    """A package row pointing at arbitrary content, bypassing the upload's checks (a hostile database)."""
    sha256 = sha256 or hashlib.sha256(data).hexdigest()
    with database.transaction() as cur:
        cur.execute("INSERT INTO package_blobs (sha256, data, size) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    (sha256, psycopg2.Binary(data), len(data)))
        cur.execute("INSERT INTO packages (name, version, kind, sha256) VALUES (%s, '1.0.0', 'addon', %s)",
                    (name, sha256))


def test_hostile_packages_fail_with_their_reason_and_write_nothing(env, database, tmp_path):
    reasons = {case: reason for case, (_, reason) in HOSTILE.items()}
    slugs = {case: case.replace(" ", "-") for case in HOSTILE}
    for case, (build, _) in HOSTILE.items():
        store_raw(database, slugs[case], build())
    good = make_zip([("a.txt", "a")], manifest="name: other\nversion: '1.0.0'\n")
    store_raw(database, "bad-sha256", good, sha256="0" * 64)
    reasons["bad sha256"] = f"sha256 mismatch: expected {'0' * 64}, got {hashlib.sha256(good).hexdigest()}"
    slugs["bad sha256"] = "bad-sha256"
    store_raw(database, "wrong-name", good)
    reasons["wrong name"] = "package.yaml names other 1.0.0, not wrong-name 1.0.0"
    slugs["wrong name"] = "wrong-name"
    assert not os.path.exists("/tmp/evil.txt")

    program = start_installer(env, tmp_path, "solo")
    try:
        def all_failed():
            rows = database.fetchall("SELECT name, status, reason, attempts, next_attempt_at > now() "
                                     "FROM package_installs WHERE instance_id = 'solo'")
            return len(rows) == len(slugs) and all(r[1] == "failed" for r in rows) and rows

        rows = {r[0]: r[2:] for r in wait_for(all_failed, 60, "every hostile package to fail")}
        for case, slug in slugs.items():
            reason, attempts, retry_later = rows[slug]
            assert reasons[case] in reason, (case, reason)
            assert attempts == 1 and retry_later, case  # retried later, with backoff
        data_dir = tmp_path / "solo"
        assert set(os.listdir(data_dir)) - {"spool"} == {".installer.lock", ".installing"}  # spool: the logs
        assert os.listdir(data_dir / ".installing") == []
        assert not any("evil" in p or "passwd" in p or "shadow" in p for p in files_under(tmp_path))
        assert not os.path.exists("/tmp/evil.txt")
        assert "cannot install slip 1.0.0 (attempt 1 of 5, retry in 10 s): entry" in program.output()
        wait_for(lambda: database.fetchone("SELECT info->>'queue_depth' FROM instances WHERE instance_id = 'solo' "
                                           "AND program = 'installer'") == (str(len(slugs)),), 15,
                 "the heartbeat to report the queue depth")
    finally:
        assert program.stop() == 0, program.output()


def big_package(files: int = 800, size: int = 30_000) -> tuple[bytes, dict]:
    content = {f"data/{i:05d}.bin": os.urandom(size) for i in range(files)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("package.yaml", "name: big\nversion: '2.0'\n")
        for name, data in content.items():
            zf.writestr(name, data)
    return buffer.getvalue(), content


def test_sigkill_mid_install_leaves_nothing_half_installed(env, database, tmp_path):
    data, content = big_package()
    with database.transaction() as cur:
        packages.store(cur, data, "dependency_package")
    target = tmp_path / "k" / "dependency_packages" / "big" / "2.0"
    staging = tmp_path / "k" / ".installing"

    def unpacked_so_far() -> int:
        return sum(len(names) for _, _, names in os.walk(staging)) if staging.exists() else 0

    program = start_installer(env, tmp_path, "k")
    try:
        wait_for(lambda: unpacked_so_far() >= 100 or not program.alive(), 60, "the unpacking to be under way",
                 every=0.005)
        program.kill()
        partial = unpacked_so_far()
    finally:
        program.stop()
    assert 100 <= partial < len(content) + 1, partial  # killed mid-unpack, for real
    assert not target.exists()
    assert states(database, "big", "2.0") == {"k": "pending"}

    program = start_installer(env, tmp_path, "k")
    try:
        wait_for(lambda: states(database, "big", "2.0") == {"k": "installed"}, 60, "the install after restart")
        installed = files_under(target)
        assert len(installed) == len(content) + 1
        assert all(installed[name] == data for name, data in content.items())
        assert os.listdir(staging) == []
    finally:
        assert program.stop() == 0, program.output()
    assert archive.sha256_of(data) == database.fetchone("SELECT sha256 FROM packages WHERE name = 'big'")[0]
