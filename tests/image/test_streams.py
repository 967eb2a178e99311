"""2,000 live subscribers against a container of the image: the file-descriptor limits and the start check."""

import asyncio
import json
import resource
import time
import urllib.request
import uuid

import uvloop

from bench.sse.client import Harness
from tests.image.podman import IMAGE, NPROC, TOKEN, Container, open_files, podman, progress
from tests.pg import free_port

SUBSCRIBERS = 2000
NOFILE = 4096  # below the default AYON_STREAM_MAX_SUBSCRIBERS: the start check must say so


def test_two_thousand_subscribers_get_one_event(container_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= SUBSCRIBERS + 200, f"this test needs {SUBSCRIBERS + 200} open files (ulimit -Hn is {hard})"
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    container = Container({"AYON_INSTANCE_ID": "streams", "AYON_HTTP_BIND": f"127.0.0.1:{port}",
                           "AYON_EMBEDDED_PG_PORT": str(free_port()), "AYON_ADMIN_TOKEN": TOKEN})
    # As DETACHED_OPTIONS, with room for the streams: the entrypoint raises the soft limit to the hard one.
    container.name = "ayon-test-streams-" + uuid.uuid4().hex[:6]
    flags = [item for key, value in container.env.items() for item in ("-e", f"{key}={value}")]
    podman("run", "-d", "--name", container.name, "--network", "host", "--ulimit", f"nofile=1024:{NOFILE}",
           "--ulimit", f"nproc={NPROC}:{NPROC}", "--health-interval", "disable", *flags, IMAGE, check=True)
    try:
        container.wait_healthy()
        # The soft limit went up to the hard one, and the server said what that holds.
        assert open_files(container) == (NOFILE, NOFILE)
        assert f"the open-files limit (nofile) is {NOFILE}, below AYON_STREAM_MAX_SUBSCRIBERS=10000" in \
            container.logs(400)

        async def scenario():
            harness = Harness("127.0.0.1", port, TOKEN)
            paths = [("/api/events/stream?topic=" + ("action.*" if i % 2 else "action.bench,server.*"), False)
                     for i in range(SUBSCRIBERS)]
            started = time.monotonic()
            await harness.open(paths, timeout=120)
            progress(f"{SUBSCRIBERS} subscribers open in {time.monotonic() - started:.1f} s")
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/actions", method="POST",
                                             data=json.dumps({"topic": "action.bench"}).encode(),
                                             headers={"Authorization": f"Bearer {TOKEN}",
                                                      "Content-Type": "application/json"})
            await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=30).read())
            deadline = time.monotonic() + 30
            while sum(sub.messages for sub in harness.subs) < SUBSCRIBERS:
                assert time.monotonic() < deadline, f"{sum(s.messages for s in harness.subs)} of {SUBSCRIBERS} got it"
                await asyncio.sleep(0.1)
            assert all(sub.messages == 1 for sub in harness.subs)
            assert not any(sub.closed for sub in harness.subs)
            harness.close()

        uvloop.run(scenario())
    finally:
        container.remove()
