"""The maintenance webhook against a real HTTP receiver on loopback, and its secret kept out of logs and events."""

import http.server
import json
import logging
import threading
import time

import pytest

from maintenance import notify
from server.core import config, events, values
from server.core.errors import ConfigError
from tests.apiclient import assert_error, client, wait_for  # noqa: F401  (fixtures)
from tests.test_urlfetch import fake_resolver

SECRET = "s3cret-Token_value!"
PASSWORD = "pa55-in-url"
QUERY_TOKEN = "q-token-42"
BODY = {"topic": "server.maintenance", "event_id": "0b7e4a5c-run", "status": "failed",
        "description": "1 of 6 tasks failed: vacuum", "summary": {"duration_s": 3.5, "tasks": []}}
log = logging.getLogger("ayon.maintenance.test-notify")


class Receiver:
    """An HTTP server in a thread on 127.0.0.1 that records each request and answers from a script.

    `answers` is consumed one per request: a status code, ("redirect", location), or "silent" (read the
    request, then answer nothing until the receiver closes). When it runs out, 204.
    """

    def __init__(self, answers=()):
        self.answers = list(answers)
        self.requests: list[dict] = []
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": self.rfile.read(length)})
                answer = receiver.answers.pop(0) if receiver.answers else 204
                if answer == "silent":
                    receiver.release.wait(30)
                    return
                if isinstance(answer, tuple):
                    self.send_response(302)
                    self.send_header("Location", answer[1])
                else:
                    self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path="/hook", userinfo="", query=""):
        return f"http://{userinfo}127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(*answers):
        made.append(Receiver(answers))
        return made[-1]

    yield make
    for one in made:
        one.close()


def section(**values):
    """The notify section as the runner reads it: a configuration View, every value through its validator.

    The receivers here are on loopback, so the section opts in to private addresses unless told otherwise.
    """
    values.setdefault("allow_private_urls", True)
    doc = config.defaults()
    doc["maintenance"]["notify"].update(values)
    checked, problems = config.usable(doc)
    assert not problems, problems
    return config.View(checked).maintenance.notify


def send(notify_section, stop=None):
    return notify.send(notify_section, BODY, stop or threading.Event(), log)


def test_one_post_carries_the_body_and_the_secret(receiver, caplog):
    hook = receiver()
    caplog.set_level(logging.INFO, logger=log.name)
    assert send(section(url=hook.url(query="channel=ops"), secret=SECRET)) is True
    assert len(hook.requests) == 1
    request = hook.requests[0]
    assert request["path"] == "/hook?channel=ops"
    assert json.loads(request["body"]) == BODY
    assert request["headers"]["X-Ayon-Webhook-Secret"] == SECRET
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["User-Agent"] == "ayon-maintenance"
    assert "Authorization" not in request["headers"]
    assert f"maintenance webhook http://127.0.0.1:{hook.port}/hook?…: delivered (HTTP 204)" in caplog.text


def test_a_chosen_header_and_credentials_in_the_url(receiver):
    hook = receiver()
    assert send(section(url=hook.url(userinfo=f"ops:{PASSWORD}@"), header="X-Token", secret=SECRET)) is True
    headers = hook.requests[0]["headers"]
    assert headers["X-Token"] == SECRET and "X-Ayon-Webhook-Secret" not in headers
    assert headers["Authorization"] == "Basic b3BzOnBhNTUtaW4tdXJs"  # ops:pa55-in-url


def test_no_secret_no_header(receiver):
    hook = receiver()
    assert send(section(url=hook.url())) is True
    assert "X-Ayon-Webhook-Secret" not in hook.requests[0]["headers"]


def test_empty_url_does_nothing():
    started = time.monotonic()
    assert notify.send(section(url=""), BODY, threading.Event(), log) is False
    assert time.monotonic() - started < 0.1


def test_failing_twice_then_ok_is_delivered_once_after_three_attempts(receiver, caplog):
    hook = receiver(500, 503)
    caplog.set_level(logging.INFO, logger=log.name)
    started = time.monotonic()
    assert send(section(url=hook.url(), retries=3, secret=SECRET)) is True
    took = time.monotonic() - started
    assert len(hook.requests) == 3
    assert all(json.loads(r["body"]) == BODY for r in hook.requests)
    assert 3.0 <= took < 6.0  # waited 1 s, then 2 s
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"maintenance webhook {hook.url()}: attempt 1 of 4 failed: the receiver answered 500 Internal Server Error; "
        "trying again in 1 s",
        f"maintenance webhook {hook.url()}: attempt 2 of 4 failed: the receiver answered 503 Service Unavailable; "
        "trying again in 2 s",
    ]
    assert "delivered (HTTP 204)" in caplog.text and "at attempt 3" in caplog.text


def test_a_receiver_that_never_answers_is_given_up_in_bounded_time(receiver, caplog):
    hook = receiver("silent", "silent", "silent")
    started = time.monotonic()
    assert send(section(url=hook.url(), timeout_seconds=1, retries=1)) is False
    took = time.monotonic() - started
    assert 3.0 <= took < 4.5  # two attempts of 1 s and a pause of 1 s
    assert len(hook.requests) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"maintenance webhook {hook.url()}: the run's outcome was not delivered (after 2 attempts; last: no answer "
        "within 1 s (maintenance.notify.timeout_seconds)); check that the receiver is up and reachable from this "
        "instance; the run is recorded in event 0b7e4a5c-run"]


def test_nothing_listening_fails_each_attempt(receiver, caplog):
    hook = receiver()
    url = hook.url()
    hook.close()  # the port is free again: connections are refused
    assert send(section(url=url, retries=1)) is False
    assert "attempt 1 of 2 failed: the request failed (Connection refused); trying again in 1 s" in caplog.text
    assert "not delivered (after 2 attempts; last: the request failed (Connection refused))" in caplog.text


def test_stop_ends_the_retries_at_once(receiver, caplog):
    hook = receiver(500, 500, 500, 500)
    stop = threading.Event()
    result = {}
    sender = threading.Thread(target=lambda: result.update(sent=send(section(url=hook.url(), retries=5), stop)))
    sender.start()
    wait_for(lambda: "trying again in 1 s" in caplog.text, 5, "the first attempt to fail")
    stopped = time.monotonic()
    stop.set()
    sender.join(5)
    assert not sender.is_alive()
    assert time.monotonic() - stopped < 0.5
    assert result == {"sent": False}
    assert len(hook.requests) == 1
    assert "not delivered (after attempt 1 of 6: the process is stopping" in caplog.text


def test_a_run_interrupted_by_a_shutdown_still_gets_one_short_attempt(receiver):
    """The runner reports an aborted run while its stop flag is set: one attempt, cut to STOP_GRACE."""
    stop = threading.Event()
    stop.set()
    hook = receiver()
    assert send(section(url=hook.url(), retries=3), stop) is True
    assert len(hook.requests) == 1

    silent = receiver("silent", "silent")
    started = time.monotonic()
    assert send(section(url=silent.url(), retries=3, timeout_seconds=60), stop) is False
    assert time.monotonic() - started < notify.STOP_GRACE + 1.0
    assert len(silent.requests) == 1


def test_a_redirect_is_not_followed(receiver, caplog):
    hook = receiver(("redirect", f"/elsewhere?token={QUERY_TOKEN}"))
    assert send(section(url=hook.url(), retries=3, secret=SECRET)) is False
    assert [r["path"] for r in hook.requests] == ["/hook"]  # neither followed nor tried again
    assert "the receiver answered 302 Found, a redirect to /elsewhere?…, which is not followed" in caplog.text
    assert "another would fail the same way" in caplog.text
    assert "set maintenance.notify.url to the address the receiver redirects to" in caplog.text
    assert QUERY_TOKEN not in caplog.text


@pytest.mark.parametrize("status,advice", [
    (401, "check maintenance.notify.secret and maintenance.notify.header"),
    (404, "check maintenance.notify.url"),
    (422, "the receiver refused the request"),
])
def test_a_refusal_is_not_tried_again(receiver, caplog, status, advice):
    hook = receiver(status, status)
    assert send(section(url=hook.url(), retries=3)) is False
    assert len(hook.requests) == 1
    assert advice in caplog.text


def test_too_many_requests_is_tried_again(receiver):
    hook = receiver(429)
    assert send(section(url=hook.url(), retries=1)) is True
    assert len(hook.requests) == 2


def test_the_secret_never_reaches_the_log(receiver, caplog):
    caplog.set_level(logging.DEBUG)
    for answers, extra in ((("silent",), {"timeout_seconds": 1}), ((500, 500), {}), ((("redirect", "/x"),), {}),
                           ((), {})):
        hook = receiver(*answers)
        url = hook.url(userinfo=f"ops:{PASSWORD}@", query=f"token={QUERY_TOKEN}")
        send(section(url=url, secret=SECRET, retries=1, **extra))
        assert hook.requests[0]["headers"]["X-Ayon-Webhook-Secret"] == SECRET  # it was sent, all the same
    dead = receiver()
    url = dead.url(userinfo=f"ops:{PASSWORD}@", query=f"token={QUERY_TOKEN}")
    dead.close()
    send(section(url=url, secret=SECRET, retries=0))
    assert "maintenance webhook" in caplog.text
    for hidden in (SECRET, PASSWORD, QUERY_TOKEN, "ops:", "b3BzOnBhNTUtaW4tdXJs"):
        assert hidden not in caplog.text


@pytest.mark.parametrize("url,expected", [
    ("https://user:pw@hooks.example.com:8443/a/b?sig=abc#frag", "https://hooks.example.com:8443/a/b?…"),
    ("http://hooks.example.com/plain", "http://hooks.example.com/plain"),
    ("https://user:p/w@hooks.example.com/x", "https://…"),  # an unencoded '/' in the password
])
def test_urls_are_shown_without_credentials(url, expected):
    assert notify.shown(url) == expected


@pytest.mark.parametrize("status,on_finish,url,expected", [
    ("failed", False, "http://h/x", True),
    ("aborted", False, "http://h/x", True),
    ("finished", False, "http://h/x", False),
    ("finished", True, "http://h/x", True),
    ("failed", True, "", False),
    ("busy", True, "http://h/x", False),
])
def test_which_runs_are_wanted(status, on_finish, url, expected):
    assert notify.wanted(section(url=url, on_finish=on_finish), status) is expected


# --- where the webhook may go: the address policy of install-from-url ---


OPT_IN_WORDS = ("the maintenance webhook is sent to public addresses only unless the configuration sets "
                "maintenance.notify.allow_private_urls")


@pytest.mark.parametrize("host,why", [
    ("127.0.0.1", "127.0.0.1 is a loopback address"),
    ("[::1]", "::1 is a loopback address"),
    ("169.254.169.254", "169.254.169.254 is a link-local address"),  # cloud metadata
    ("10.1.2.3", "10.1.2.3 is a private address"),
    ("192.168.0.10", "192.168.0.10 is a private address"),
    ("0x7f.1", "0x7f.1 (127.0.0.1) is a loopback address"),  # a number as browsers read it
    ("[::ffff:10.0.0.1]", "::ffff:10.0.0.1 (::ffff:a00:1) is a private address (10.0.0.1) in IPv6 form"),
])
def test_a_non_public_receiver_is_refused_unless_opted_in(receiver, caplog, host, why):
    hook = receiver()
    url = hook.url().replace("127.0.0.1", host)
    started = time.monotonic()
    assert send(section(url=url, allow_private_urls=False, retries=3)) is False
    assert time.monotonic() - started < 1  # refused before connecting, and not tried again
    assert hook.requests == []
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line == (f"maintenance webhook http://{host}:{hook.port}/hook: the run's outcome was not delivered (after "
                    f"attempt 1 of 4: another would fail the same way; last: {why}; {OPT_IN_WORDS}); point "
                    "maintenance.notify.url at a public address, or set maintenance.notify.allow_private_urls to true "
                    "for a receiver on a private network; the run is recorded in event 0b7e4a5c-run")


def test_opted_in_the_loopback_receiver_gets_the_post(receiver):
    hook = receiver()
    assert send(section(url=hook.url(), allow_private_urls=True)) is True
    assert len(hook.requests) == 1


def test_the_address_is_checked_when_sending_and_the_post_goes_to_it(receiver, caplog, monkeypatch):
    """A public-looking name is judged by what it resolves to at the time of sending, and connected to there."""
    hook = receiver()
    calls: list = []
    answers = {"hooks.example": ["127.0.0.1"]}
    monkeypatch.setattr(notify_socket(), "getaddrinfo", fake_resolver(answers, calls))
    url = f"http://hooks.example:{hook.port}/hook"
    assert send(section(url=url, allow_private_urls=False)) is False
    assert hook.requests == [] and calls == ["hooks.example"]
    assert f"hooks.example (127.0.0.1) is a loopback address; {OPT_IN_WORDS}" in caplog.text

    # Opted in, the POST goes to the address that was checked; Host still names the host. A second
    # look-up (rebinding to where nothing listens) would fail: there is none.
    def rebinding(host, *args, **kwargs):
        found = fake_resolver(answers, calls)(host, *args, **kwargs)
        answers["hooks.example"] = ["127.0.0.2"]
        return found

    monkeypatch.setattr(notify_socket(), "getaddrinfo", rebinding)
    calls.clear()
    assert send(section(url=url, allow_private_urls=True)) is True
    assert calls == ["hooks.example"]
    assert hook.requests[0]["headers"]["Host"] == f"hooks.example:{hook.port}"


def notify_socket():
    import socket

    return socket


def test_a_name_that_does_not_resolve_is_tried_again(caplog):
    assert send(section(url="http://nothing.invalid/hook", retries=1)) is False
    assert "attempt 1 of 2 failed: cannot resolve nothing.invalid (" in caplog.text
    assert "attempt 2 of 2 failed: cannot resolve nothing.invalid (" in caplog.text


def test_the_opt_in_is_its_own_key():
    """installer.allow_private_urls does not open the webhook, nor the webhook's key install-from-url."""
    doc = config.defaults()
    assert doc["maintenance"]["notify"]["allow_private_urls"] is False
    assert doc["installer"]["allow_private_urls"] is False
    assert section(url="http://127.0.0.1/x", allow_private_urls=False).allow_private_urls is False


# --- the webhook's header name and URL, in every way a value gets in ---


RESERVED_MESSAGE = ("maintenance.notify.header: expected a header name of your own such as X-Ayon-Webhook-Secret, not "
                    "one the request sets itself or proxies read (Host, Content-Length, Transfer-Encoding, Connection, "
                    "Upgrade, TE, Trailer, Keep-Alive, Expect, Content-Encoding, Accept-Encoding, Content-Type, "
                    "User-Agent, Authorization, Proxy-*), got {!r}")
RESERVED = ["Host", "host", "Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "TE", "Trailer",
            "Keep-Alive", "Expect", "Proxy-Authorization", "proxy-connection", "Content-Type", "User-Agent",
            "Authorization"]


@pytest.mark.parametrize("name", RESERVED)
def test_a_reserved_header_name_is_refused(name):
    with pytest.raises(ConfigError) as caught:
        config.validate_patch({"maintenance": {"notify": {"header": name}}})
    assert str(caught.value) == RESERVED_MESSAGE.format(name)


def test_every_header_the_sender_sets_is_reserved(receiver):
    """What the POST carries besides the configured header: none of it can be configured over."""
    hook = receiver()
    assert send(section(url=hook.url(userinfo="ops:pw@"), header="X-Token", secret=SECRET)) is True
    sent = set(hook.requests[0]["headers"]) - {"X-Token"}
    assert sent == {"Host", "Accept-Encoding", "Content-Length", "Content-Type", "User-Agent", "Authorization"}
    for name in sent:
        with pytest.raises(ValueError):
            config.tree()["maintenance"]["notify"]["header"].kind(name)
    assert isinstance(config.tree()["maintenance"]["notify"]["header"].kind, values.HeaderName)


def test_a_reserved_header_is_refused_by_the_api_and_changes_nothing(client, database):
    result = client.simulate_patch("/api/config", json={"maintenance": {"notify": {"header": "Transfer-Encoding"}}})
    assert_error(result, 400, RESERVED_MESSAGE.format("Transfer-Encoding"))
    assert client.simulate_get("/api/config").json["maintenance"]["notify"]["header"] == "X-Ayon-Webhook-Secret"
    assert events.query(database, topic=events.CONFIG_CHANGED) == []


def test_a_reserved_header_in_the_config_file_is_refused(tmp_path):
    path = tmp_path / "ayon.yaml"
    path.write_text("maintenance:\n  notify:\n    header: Content-Length\n")
    with pytest.raises(ConfigError) as caught:
        config.load_file(str(path))
    assert str(caught.value) == f"AYON_CONFIG_FILE {path}: " + RESERVED_MESSAGE.format("Content-Length")


def test_a_reserved_header_written_around_the_api_is_never_used(database):
    """A program reads the stored document through its validators: the default (or its last good value) is used."""
    database.execute("""INSERT INTO server_config (id, data) VALUES (1, '{"maintenance": {"notify": {"header": "Host"}}}')
                        ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data""")
    with database.transaction() as cur:
        stored = config.stored(cur)
        assert stored["maintenance"]["notify"]["header"] == "Host"
        assert config.get(cur).maintenance.notify.header == "X-Ayon-Webhook-Secret"
    good = config.defaults()
    good["maintenance"]["notify"]["header"] = "X-Kept"
    doc, problems = config.usable(stored, good)
    assert doc["maintenance"]["notify"]["header"] == "X-Kept"
    assert [(p.key, p.kept) for p in problems] == [("maintenance.notify.header", "X-Kept")]
    assert problems[0].error == RESERVED_MESSAGE.format("Host").split(": ", 1)[1]


@pytest.mark.parametrize("url,error", [
    ("ftp://ops:pw@hooks.example/x?sig=1",
     "expected an http:// or https:// URL, or empty: only http:// and https:// URLs are allowed, got 'ftp://hooks.example/x?…'"),
    ("http://hooks.example:99999/x", "expected an http:// or https:// URL, or empty: not a valid URL (host or port), "
                                     "got 'http://…'"),
    ("http://1.2.3.999/x", "expected an http:// or https:// URL, or empty: '1.2.3.999' is not a valid IPv4 address, "
                           "got 'http://1.2.3.999/x'"),
    ("http:///x", "expected an http:// or https:// URL, or empty: the URL names no host, got 'http:///x'"),
    ("http://hooks.example/a b", "expected an http:// or https:// URL without spaces or control characters"),
    (42, "expected an http:// or https:// URL, or empty, got 42"),
])
def test_a_url_no_request_can_go_to_is_refused_without_its_credentials(url, error):
    with pytest.raises(ConfigError) as caught:
        config.validate_patch({"maintenance": {"notify": {"url": url}}})
    assert str(caught.value) == f"maintenance.notify.url: {error}"
    assert "pw" not in str(caught.value) and "sig" not in str(caught.value)


# --- the secret in the configuration ---


def test_the_secret_stays_out_of_the_config_changed_event(client, database):
    result = client.simulate_patch("/api/config", json={"maintenance": {"notify": {
        "url": "https://hooks.example.com/ayon", "secret": SECRET}}})
    assert result.status_code == 200, result.text
    [changed] = events.query(database, topic=events.CONFIG_CHANGED)
    assert changed["summary"]["changes"]["maintenance.notify.secret"] == {"old": "", "new": "***"}
    assert changed["summary"]["changes"]["maintenance.notify.url"] == {
        "old": "", "new": "https://hooks.example.com/ayon"}
    assert "maintenance.notify.secret" in changed["description"]
    # Nowhere in the stored event: not in its columns, not in the API JSON kept beside them.
    assert database.fetchone("SELECT count(*) FROM events WHERE strpos(events::text, %s) > 0", (SECRET,))[0] == 0
    listed = client.simulate_get("/api/events", params={"topic": events.CONFIG_CHANGED})
    assert listed.status_code == 200 and SECRET not in listed.text

    # Changing it again says it changed, not from what to what; clearing it shows as empty.
    client.simulate_patch("/api/config", json={"maintenance": {"notify": {"secret": SECRET + "2"}}})
    client.simulate_patch("/api/config", json={"maintenance": {"notify": {"secret": ""}}})
    later = [e["summary"]["changes"]["maintenance.notify.secret"]
             for e in events.query(database, topic=events.CONFIG_CHANGED)]
    assert later[:2] == [{"old": "***", "new": ""}, {"old": "***", "new": "***"}]
    assert database.fetchone("SELECT count(*) FROM events WHERE strpos(events::text, %s) > 0", (SECRET,))[0] == 0


def test_a_stored_secret_that_cannot_be_used_is_reported_masked():
    """A secret written around the API that its validator refuses: the problem a program logs never quotes it."""
    good = config.defaults()
    good["maintenance"]["notify"]["secret"] = "kept-" + SECRET
    stored = config.defaults()
    stored["maintenance"]["notify"]["secret"] = "with space " + SECRET
    doc, problems = config.usable(stored, good)
    assert doc["maintenance"]["notify"]["secret"] == "kept-" + SECRET  # the program keeps its last good one
    [problem] = problems
    assert (problem.key, problem.value, problem.kept) == ("maintenance.notify.secret", "***", "***")
    assert SECRET not in problem.error

    # A whole section of the wrong shape: the good section it keeps is reported with the secret masked.
    stored["maintenance"]["notify"] = "off"
    _, problems = config.usable(stored, good)
    [problem] = problems
    assert problem.key == "maintenance.notify"
    assert problem.kept["secret"] == "***" and problem.kept["url"] == ""
    _, problems = config.usable(["not", "a", "mapping"], good)
    assert problems[0].key == "(top)" and problems[0].kept["maintenance"]["notify"]["secret"] == "***"
    assert SECRET not in repr(problems)
