"""The maintenance webhook: a JSON POST telling a receiver how a run ended.

With `maintenance.notify.url` set, a run that failed or was interrupted (and,
with `on_finish`, one that finished) is POSTed there as JSON, the secret
`maintenance.notify.secret` in the header `maintenance.notify.header`. Only a
2xx answer counts as delivered. Redirects are not followed: the answer names
where it points, and the URL should be changed to that (a POST that followed
one could carry the secret to another host).

The receiver must be at a public address unless
`maintenance.notify.allow_private_urls` is set: the address policy of
install-from-url (server/core/urls.py). Each attempt resolves the host again,
checks every address and connects to a checked one, so a name that comes to
resolve to a private address (DNS rebinding, a changed record) is refused at
the time of sending, not only when the URL was configured.

Each attempt has `timeout_seconds` in all, from the connection to the
answer's head; a failed one is tried again up to `retries` times, after 1, 2,
4 … s (at most BACKOFF_CAP). A stop ends the wait at once and no attempt
follows. A run interrupted by a shutdown is reported while its stop flag is
already set, so the first attempt is always made, cut to STOP_GRACE seconds
once the flag is set. A refusal that another attempt cannot change (a
redirect, a 4xx other than 408, 425 and 429) is not tried again.

Every line logged names the URL without its user name, password, query and
fragment (a webhook's query often is its credential), never the secret, and
says what to do next. The standard library's http.client is enough for one
POST without redirects; no dependency is added for it.
"""

import http.client
import json
import socket
import ssl
import threading
import time

from server.core import retry
from server.core.urls import Policy, Refused, Target, Unreachable, checked_addresses, connection, shown

USER_AGENT = "ayon-maintenance"
BACKOFF_FIRST = 1.0  # seconds before the second attempt, doubled before each further one
BACKOFF_CAP = 30.0
STOP_GRACE = 2.0  # what an attempt still gets once the daemon is stopping (supervisord waits 15 s in all)
POLL = 0.05  # how often a waiting attempt looks at the stop flag
# Refusals that may pass: request timeout, too early, too many requests. Any other 4xx will not.
TRANSIENT_4XX = frozenset({408, 425, 429})
OPT_IN = "maintenance.notify.allow_private_urls"


def wanted(section, status: str) -> bool:
    """Whether a run that ended with `status` goes to the webhook: failed and interrupted always, finished if asked."""
    if not section.url:
        return False
    return status in ("failed", "aborted") or (status == "finished" and bool(section.on_finish))


class _Failed(Exception):
    """An attempt that did not deliver: why (already without secrets), and whether another could."""

    def __init__(self, reason: str, advice: str, final: bool = False):
        super().__init__(reason)
        self.reason, self.advice, self.final = reason, advice, final


RECEIVER_DOWN = "check that the receiver is up and reachable from this instance"
FIX_URL = "check maintenance.notify.url"
PRIVATE = (f"point maintenance.notify.url at a public address, or set {OPT_IN} to true for a receiver on a "
           "private network")


def send(section, body: dict, stop: threading.Event, log) -> bool:
    """POST `body` as JSON to the webhook of `section` (cfg.maintenance.notify); True once a 2xx answered.

    Never raises for what the receiver or the network does; returns False at
    once when no URL is set.
    """
    url = section.url
    if not url:
        return False
    where, secret = shown(url), section.secret
    event = body.get("event_id") if isinstance(body, dict) else None
    recorded = f"; the run is recorded in event {event}" if event else ""
    try:
        target = Target(url)
    except Refused:
        log.error("maintenance webhook %s: not a URL a request can be sent to; set maintenance.notify.url to an "
                  "http:// or https:// URL%s", where, recorded)
        return False
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if target.credentials:
        headers["Authorization"] = f"Basic {target.credentials}"
    if secret:
        headers[section.header] = secret
    data = json.dumps(body, default=str).encode("utf-8")
    attempts = 1 + int(section.retries)
    timeout = float(section.timeout_seconds)
    policy = Policy("the maintenance webhook is sent to", OPT_IN, bool(section.allow_private_urls))
    failure = None
    backoff = retry.Retry(f"maintenance webhook {where}", first=BACKOFF_FIRST, cap=BACKOFF_CAP, jitter=0, stop=stop)
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        try:
            status = _attempt(target, policy, data, headers, timeout, stop)
        except _Failed as exc:
            failure = exc
        else:
            log.info("maintenance webhook %s: delivered (HTTP %d) in %.1f s%s", where, status,
                     time.monotonic() - started, f" at attempt {attempt}" if attempt > 1 else "")
            return True
        reason = _without(failure.reason, secret, target.password, target.credentials)
        again = not failure.final and attempt < attempts and not stop.is_set()
        delay = backoff.delay(attempt)
        log.warning("maintenance webhook %s: attempt %d of %d failed: %s%s", where, attempt, attempts, reason,
                    f"; trying again in {delay:g} s" if again else "")
        if again and backoff.pause(delay):
            continue
        if failure.final and attempt < attempts:
            ended = f"after attempt {attempt} of {attempts}: another would fail the same way"
        elif attempt < attempts:
            ended = f"after attempt {attempt} of {attempts}: the process is stopping"
        else:
            ended = f"after {attempts} attempt{'s' if attempts > 1 else ''}"
        log.error("maintenance webhook %s: the run's outcome was not delivered (%s; last: %s); %s%s", where, ended,
                  reason, failure.advice, recorded)
        return False
    return False  # not reached: the last attempt returns above


def _without(text: str, *secrets) -> str:
    """`text` with every secret replaced: no message of a library may carry one into the log."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _attempt(target: Target, policy: Policy, data: bytes, headers: dict, timeout: float,
             stop: threading.Event) -> int:
    """One POST in a thread of its own, so neither a silent receiver nor a blocked connect holds the caller.

    Returns the 2xx status; raises _Failed. The attempt ends at `timeout`, or
    STOP_GRACE seconds after `stop` is set, whichever comes first; its thread
    then ends by its own socket timeouts (the socket is shut down when there is one).
    """
    box: dict = {}
    done = threading.Event()

    def post() -> None:
        try:
            box["answer"] = _post(target, policy, data, headers, timeout, box)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=post, name="maintenance-webhook", daemon=True).start()
    deadline = time.monotonic() + timeout
    while not done.wait(POLL):
        now = time.monotonic()
        if stop.is_set():
            deadline = min(deadline, box.setdefault("stopping", now) + STOP_GRACE)
        if now >= deadline:
            _cut(box.get("connection"))
            if stop.is_set():
                raise _Failed(f"no answer in the {STOP_GRACE:g} s an attempt has once the process is stopping",
                              RECEIVER_DOWN)
            raise _Failed(f"no answer within {timeout:g} s (maintenance.notify.timeout_seconds)", RECEIVER_DOWN)
    if "error" in box:
        raise _failure(box["error"], timeout)
    status, reason, location = box["answer"]
    if 200 <= status < 300:
        return status
    said = f"the receiver answered {status} {reason}".rstrip()
    if 300 <= status < 400:
        points = f" to {shown(location)}" if location else ""
        raise _Failed(f"{said}, a redirect{points}, which is not followed",
                      "set maintenance.notify.url to the address the receiver redirects to", final=True)
    if status in (401, 403):
        raise _Failed(said, "check maintenance.notify.secret and maintenance.notify.header against what the "
                            "receiver expects", final=True)
    if status in (404, 405, 410):
        raise _Failed(said, FIX_URL, final=True)
    if 400 <= status < 500 and status not in TRANSIENT_4XX:
        raise _Failed(said, "the receiver refused the request; see its logs for why", final=True)
    raise _Failed(said, "the receiver failed; see its logs, and check that it is up")


def _post(target: Target, policy: Policy, data: bytes, headers: dict, timeout: float,
          box: dict) -> tuple[int, str, str | None]:
    """The POST itself, to an address checked now: (status, reason, Location) of the answer's head; no body read."""
    addresses = checked_addresses(target, policy)  # Refused, Unreachable
    last: OSError | None = None
    for address in addresses:
        opened = connection(target, address, timeout, connect_timeout=timeout)
        box["connection"] = opened
        try:
            opened.connect()
        except OSError as exc:  # this address does not answer: the next one may
            opened.close()
            last = exc
            continue
        try:
            opened.request("POST", target.path, body=data, headers=headers)
            answer = opened.getresponse()
            reason = "".join(c for c in (answer.reason or "") if " " <= c <= "~")[:80]
            return answer.status, reason, answer.getheader("Location")
        finally:
            opened.close()
    raise last or OSError("no address to connect to")


def _cut(connection) -> None:
    """Wake a thread blocked on the connection's socket (none yet while it connects: its timeout ends that)."""
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _failure(exc: BaseException, timeout: float) -> _Failed:
    """What a failed request says, in words; never the request's headers."""
    if isinstance(exc, Refused):
        return _Failed(exc.reason, PRIVATE if OPT_IN in exc.reason else FIX_URL, final=True)
    if isinstance(exc, Unreachable):
        return _Failed(exc.reason, FIX_URL + " and this instance's DNS")
    if isinstance(exc, TimeoutError):
        return _Failed(f"no answer within {timeout:g} s (maintenance.notify.timeout_seconds)", RECEIVER_DOWN)
    if isinstance(exc, socket.gaierror):
        return _Failed(f"cannot resolve the host ({exc.strerror or exc})", FIX_URL + " and this instance's DNS")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _Failed(f"its TLS certificate is not valid ({exc.verify_message or exc.reason})",
                       "give the receiver a certificate this instance trusts", final=True)
    if isinstance(exc, http.client.RemoteDisconnected):
        return _Failed("the receiver closed the connection without answering", RECEIVER_DOWN)
    if isinstance(exc, (http.client.InvalidURL, UnicodeError)):
        return _Failed("the URL has characters a request cannot carry", FIX_URL, final=True)
    if isinstance(exc, (OSError, http.client.HTTPException)):
        words = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return _Failed(f"the request failed ({words})", RECEIVER_DOWN)
    return _Failed(f"the request failed ({type(exc).__name__})", RECEIVER_DOWN)
