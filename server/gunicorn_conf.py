"""gunicorn settings for the server program, from the AYON_* settings."""

import glob
import os
import threading
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
# Every open event stream is a connection: room for the most a worker holds, and requests beside them.
worker_connections = _settings.stream_max_subscribers + 1000
# Long-lived requests (the event stream) must not be killed as hung workers.
timeout = 120
# After the drain (server/drain.py): requests in flight get this long. supervisord waits longer
# (supervision/roster.py: the drain, this, and 5 s).
graceful_timeout = settings_mod.SERVER_GRACE_SECONDS
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
    import falcon.asgi  # noqa: F401
    import psycopg2.extras  # noqa: F401
    import uvloop  # noqa: F401

    import server.app  # noqa: F401


def on_starting(server):
    import gc
    import logging
    import sys

    from server.core.errors import ConfigError
    from server.core.program import check_session_url, setup_pending
    from server.metrics import prepare_multiprocess_dir

    # The event stream LISTENs: a URL on which it would stay silent is refused before any worker starts.
    # The check mostly waits on PostgreSQL (two connections and a NOTIFY), so it runs beside the
    # imports, which need the CPU, and is waited for before the workers are forked. Before this
    # instance's setup has finished there may be no role to connect as: its other programs that
    # LISTEN (the installer always runs beside the server) check the same URL after it.
    failed: list[BaseException] = []

    def check() -> None:
        try:
            if not setup_pending(_settings):
                check_session_url(_settings, logging.getLogger("ayon.server"))
        except BaseException as exc:  # raised again below, in the master's own thread
            failed.append(exc)

    checking = threading.Thread(target=check, name="ayon-listen-check")
    checking.start()
    prepare_multiprocess_dir(_metrics_dir)
    check_open_files(_settings.stream_max_subscribers, logging.getLogger("ayon.server"))
    _share_imports()
    checking.join()
    if failed:
        if isinstance(failed[0], ConfigError):
            print(f"Error: {failed[0]}", file=sys.stderr, flush=True)
            sys.exit(failed[0].exit_code)
        raise failed[0]
    from server import drain

    drain.prepare()
    drain.install(server, _settings.drain_seconds)
    # Objects that live as long as the process, out of the collector's sight: a collection in a
    # worker would otherwise write to (and so copy) every page holding them.
    gc.freeze()


# Descriptors a worker needs besides its streams: listening socket, database pools, logs, metrics files.
WORKER_FDS = 64


def check_open_files(max_subscribers: int, log) -> int:
    """Raise the soft open-files limit to the hard one (the workers inherit it); warn when streams would not fit.

    Returns the soft limit now in force.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, max_subscribers + WORKER_FDS)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # kept as it is; the check below says what that allows
    if soft != resource.RLIM_INFINITY and soft < max_subscribers + WORKER_FDS:
        log.warning("the open-files limit (nofile) is %d, below AYON_STREAM_MAX_SUBSCRIBERS=%d plus %d for the "
                    "rest: each web worker holds about %d event streams, then refuses new connections; raise "
                    "the limit (docker/podman --ulimit nofile=N:N, Compose ulimits) or lower the setting",
                    soft, max_subscribers, WORKER_FDS, max(soft - WORKER_FDS, 0))
    return soft


# The server's heartbeat (program `server`, the master's pid) comes from a thread in each worker,
# of which only the oldest living worker beats (the lowest pid among the master's children): the
# master keeps a single thread and no database connection to pass on to the workers it forks,
# requests never wait for a beat, a worker that dies hands the beat to another, and when the
# master ends its workers end with it. A process of its own did the same for 7 MiB (PSS).
_stop_beating = threading.Event()


def _workers_of(master: int) -> list[int] | None:
    """The master's children (its workers), or None where the kernel does not list them."""
    try:
        return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    except (OSError, ValueError):
        return None


def _beats_here(master: int) -> bool:
    workers = _workers_of(master)
    return not workers or os.getpid() == min(workers)  # unlisted: every worker beats, the row is the same


def _server_figures(master: int, configured: int) -> dict:
    """Worker processes alive and requests answered since start."""
    workers = _workers_of(master)
    # No /proc (or a kernel without the children list): the figure is left out.
    figures = {"workers_alive": None if workers is None else len(workers), "workers_configured": configured,
               "requests_total": None}
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


def child_exit(server, worker):
    from server.metrics import worker_exited

    worker_exited(worker.pid)


def post_worker_init(worker):
    # Open event streams end as soon as this worker is told to stop, instead of
    # holding it for the whole graceful timeout.
    from server.api import stream

    stream.watch_worker(worker)
    _start_heartbeat(worker)


def _start_heartbeat(worker):
    from server.core.heartbeat import Heartbeat
    from server.core.program import heartbeat_database, setup_pending

    master, configured = worker.ppid, worker.cfg.workers
    db = heartbeat_database(_settings, "server")  # connects for each beat
    Heartbeat(db, _settings.instance_id, "server", _stop_beating, lambda: _server_figures(master, configured),
              pid=master, when=lambda: _beats_here(master) and not setup_pending(_settings)).start()


def worker_exit(server, worker):
    _stop_beating.set()
