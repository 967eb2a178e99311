"""The libraries' private internals the project patches, pinned: a new version fails here, by name, first.

Each test names the version whose internals the module was written against
(requirements.txt pins it). When one fails, read the library's new source for
what the module uses, adjust the module, then the version named here
(docs/architecture.md, "Private internals", says what each patch buys).
"""

import inspect
import re
import signal
from importlib.metadata import version
from pathlib import Path

import gunicorn
from gunicorn.arbiter import Arbiter
from gunicorn.asgi.protocol import ASGIProtocol, BodyReceiver
from gunicorn.workers.gasgi import ASGIWorker

from server import drain, metrics, worker

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"


def pinned(name: str) -> str:
    found = re.search(rf"^{re.escape(name)}==(\S+)$", REQUIREMENTS.read_text(), re.MULTILINE)
    return found.group(1) if found else "(not pinned)"


def test_server_worker_was_written_against_gunicorn_27_0_1():
    assert (pinned("gunicorn"), gunicorn.__version__) == ("27.0.1", "27.0.1")
    # The private methods server/worker.py overrides: each must still be gunicorn's.
    overridden = {ASGIProtocol: ("_start_http1", "_on_headers_complete", "_send_error_response", "_will_close",
                                 "_close_transport"),
                  ASGIWorker: ("_setup_event_loop",)}
    for base, names in overridden.items():
        for name in names:
            assert callable(getattr(base, name, None)), f"{base.__name__}.{name}"
            assert name in vars(worker.HTTPProtocol if base is ASGIProtocol else worker.BalancedASGIWorker)
    assert issubclass(worker.TimedBodyReceiver, BodyReceiver)


def test_server_drain_was_written_against_gunicorn_27_0_1():
    assert (pinned("gunicorn"), gunicorn.__version__) == ("27.0.1", "27.0.1")
    # drain.install replaces the arbiter's handle_term on the instance: the main loop must still look
    # handlers up by name on the instance, halt (a graceful stop) on StopIteration, and queue signals
    # on SIG_QUEUE, where the drain's own SIGALRM (not one of the arbiter's signals) puts its SIGTERM.
    run = inspect.getsource(Arbiter.run)
    assert 'getattr(self, "handle_%s" % signame' in run and "except (StopIteration, KeyboardInterrupt):" in run
    assert "raise StopIteration" in inspect.getsource(Arbiter.handle_term)
    assert "self.SIG_QUEUE = queue.SimpleQueue()" in inspect.getsource(Arbiter.__init__)
    assert "self.SIG_QUEUE.put_nowait(sig)" in inspect.getsource(Arbiter.signal)
    assert signal.SIGTERM in Arbiter.SIGNALS and signal.SIGALRM not in Arbiter.SIGNALS
    assert "self.stop()" in inspect.getsource(Arbiter.halt)  # graceful: SIGTERM to the workers
    assert callable(drain.install) and "_will_close" in vars(worker.HTTPProtocol)


def test_the_stream_hand_over_was_written_against_gunicorn_27_0_1():
    assert (pinned("gunicorn"), gunicorn.__version__) == ("27.0.1", "27.0.1")
    # HTTPProtocol.hand_over ends a request as if the client had left and gives its transport to the
    # event stream: the flags and timers it sets must still be the ones gunicorn's protocol reads.
    init = inspect.getsource(ASGIProtocol.__init__)
    for name in ("self._closed", "self._conn_lost_handled", "self._body_receiver"):
        assert name in init, name
    for name in ("_cancel_keepalive_timer", "_build_http_scope"):
        assert callable(getattr(ASGIProtocol, name, None)), name
    assert "_conn_lost_handled" in inspect.getsource(ASGIProtocol.connection_lost)
    assert "nr_conns -= 1" in inspect.getsource(ASGIProtocol.connection_lost)
    assert callable(getattr(BodyReceiver, "signal_disconnect", None))
    assert "hand_over" in vars(worker.HTTPProtocol)


def test_server_metrics_was_written_against_prometheus_client_0_26_0():
    assert (pinned("prometheus-client"), version("prometheus-client")) == ("0.26.0", "0.26.0")
    # metrics._Pending writes a histogram's sum and buckets, and reads its bounds, directly.
    child = metrics.LATENCY.labels("GET", "/pinned")
    assert hasattr(child._sum, "inc") and all(hasattr(b, "inc") for b in child._buckets)
    assert metrics._BOUNDS == tuple(metrics.LATENCY._upper_bounds) and metrics._BOUNDS[-1] == float("inf")
