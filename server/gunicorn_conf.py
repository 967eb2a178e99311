"""gunicorn settings for the server program, from the AYON_* settings."""

import glob
import os
import signal
import time
from pathlib import Path

from server.core import layout
from server.core import settings as settings_mod

_settings = settings_mod.load()

wsgi_app = "server.app:get_app()"
bind = [_settings.http_bind]
workers = _settings.server_workers
# falcon ASGI under gunicorn's own asyncio worker: see docs/benchmarks.md for the numbers.
worker_class = "server.worker.BalancedASGIWorker"
# uvloop (a runtime dependency): the same app answers 1.2-1.4x more requests than on asyncio's
# loop (docs/benchmarks.md). server/worker.py holds signals until the loop runs, which uvloop needs.
asgi_loop = "uvloop"
worker_connections = 1000
# Long-lived requests (the event stream) must not be killed as hung workers.
timeout = 120
graceful_timeout = 20  # supervisord's stopwaitsecs for the server is longer
keepalive = 5
# Access lines come from the app (server/core/logs.py AccessLog), in our log format.
accesslog = None
errorlog = "-"
control_socket_disable = True
proc_name = "ayon-server"
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# Metrics: each worker writes its counters to files in this folder and a scrape
# sums them (server/metrics.py). Set before any worker imports prometheus_client.
_metrics_dir = str(layout.metrics_dir(_settings.data_dir))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir


def _share_imports() -> None:
    """Import what every worker imports, once, in the master: forked workers share those pages with it."""
    import gc

    import falcon.asgi  # noqa: F401
    import psycopg2.extras  # noqa: F401
    import uvloop  # noqa: F401

    import server.app  # noqa: F401

    # Objects that live as long as the process, out of the collector's sight: a collection in a
    # worker would otherwise write to (and so copy) every page holding them.
    gc.freeze()


def on_starting(server):
    from server.metrics import prepare_multiprocess_dir

    prepare_multiprocess_dir(_metrics_dir)
    _share_imports()


# The server's heartbeat (program `server`, the master's pid) comes from a child of the master
# forked before the first worker (server/core/heartbeat.py fork_beside): requests never wait for
# it, the master keeps a single thread and no database connection to pass on to the workers it
# forks, and it ends with the master.
_beside = {"pid": 0}


def _server_figures(master: int, configured: int) -> dict:
    """Worker processes alive (the master's children but the beating one) and requests answered since start."""
    figures = {"workers_alive": None, "workers_configured": configured, "requests_total": None}
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        figures["workers_alive"] = sum(1 for pid in children if int(pid) != os.getpid())
    except (OSError, ValueError):
        pass  # no /proc (or a kernel without the children list): the figure is left out
    try:
        from prometheus_client.multiprocess import MultiProcessCollector

        from server.metrics import REQUESTS

        name = REQUESTS.describe()[0].name
        # Counters only, each worker's file, dead workers' too: the workers' own counts, 0.5 s behind at most.
        files = glob.glob(os.path.join(_metrics_dir, "counter_*.db"))
        figures["requests_total"] = int(sum(sample.value for metric in MultiProcessCollector.merge(files)
                                            if metric.name == name for sample in metric.samples
                                            if sample.name == name + "_total"))
    except Exception:  # a file being written or removed: the next beat reads it again
        pass
    return figures


def when_ready(server):
    from server.core import heartbeat
    from server.core.logs import setup_logging

    master, configured = os.getpid(), server.cfg.workers
    _beside["pid"] = heartbeat.fork_beside(
        _settings, "server", lambda: _server_figures(master, configured),
        close_fds=[listener.fileno() for listener in server.LISTENERS], setup_logging=setup_logging)


def on_exit(server):
    pid = _beside["pid"]
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
            time.sleep(0.02)
    except (ProcessLookupError, ChildProcessError):
        pass  # already gone (the master reaps any child that ends)


def child_exit(server, worker):
    from server.metrics import worker_exited

    worker_exited(worker.pid)


def post_worker_init(worker):
    # Open event streams end as soon as this worker is told to stop, instead of
    # holding it for the whole graceful timeout.
    from server.api import stream

    stream.watch_worker(worker)
