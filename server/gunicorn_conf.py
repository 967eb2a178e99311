"""gunicorn settings for the server program, from the AYON_* settings."""

import os

from server.core import layout
from server.core import settings as settings_mod

_settings = settings_mod.load()

wsgi_app = "server.app:get_app()"
bind = [_settings.http_bind]
workers = _settings.server_workers
# falcon ASGI under gunicorn's own asyncio worker: see docs/benchmarks.md for the numbers.
worker_class = "server.worker.BalancedASGIWorker"
# Python's own loop, never uvloop just because something installed it: the image does not
# ship it, so tests and benchmarks must not run on it either; and under uvloop a SIGTERM
# that reaches a worker before its loop runs is lost, holding a stop for graceful_timeout.
asgi_loop = "asyncio"
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


def on_starting(server):
    from server.metrics import prepare_multiprocess_dir

    prepare_multiprocess_dir(_metrics_dir)


def child_exit(server, worker):
    from server.metrics import worker_exited

    worker_exited(worker.pid)


def post_worker_init(worker):
    # Open event streams end as soon as this worker is told to stop, instead of
    # holding it for the whole graceful timeout.
    from server.api import stream

    stream.watch_worker(worker)
