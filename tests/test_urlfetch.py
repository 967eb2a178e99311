"""Fetching from client-chosen URLs: the address filter on its own, then real fetches from loopback servers.

No test here sends a packet anywhere but loopback: refused addresses are
refused before any connection (a guard fails the test if one is attempted),
and names other than loopback ones come from a stand-in resolver.
"""

import base64
import http.server
import ipaddress
import re
import socket
import threading

import pytest

from server import urlfetch
from server.core import urls
from server.urlfetch import Refused, literal_address, refusal, shown


@pytest.mark.parametrize("address, why", [
    ("127.0.0.1", "a loopback address"),
    ("127.255.255.254", "a loopback address"),
    ("0.0.0.0", "an unspecified ('this network') address"),
    ("10.1.2.3", "a private address"),
    ("172.16.0.1", "a private address"),
    ("172.31.255.255", "a private address"),
    ("192.168.1.1", "a private address"),
    ("169.254.169.254", "a link-local address"),  # cloud metadata services
    ("100.64.0.1", "a shared (carrier-grade NAT) address"),
    ("100.127.255.255", "a shared (carrier-grade NAT) address"),
    ("192.0.0.170", "an IETF protocol address"),
    ("192.0.2.1", "a documentation address"),
    ("198.18.0.1", "a benchmarking address"),
    ("224.0.0.1", "a multicast address"),
    ("239.255.255.250", "a multicast address"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.255", "a reserved address"),
    ("::", "an unspecified address"),
    ("::1", "a loopback address"),
    ("fe80::1", "a link-local address"),
    ("fe80::1%eth0", "a link-local address"),
    ("fc00::1", "a unique-local address"),
    ("fd12:3456:789a::1", "a unique-local address"),
    ("fec0::1", "a site-local address (deprecated)"),
    ("ff02::1", "a multicast address"),
    ("2001:db8::1", "a documentation address"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "a Teredo address"),
    ("100::1", "a discard-only address"),
    ("::127.0.0.1", "an IPv4-compatible address (deprecated)"),
    ("::ffff:127.0.0.1", "a loopback address (127.0.0.1) in IPv6 form"),
    ("::ffff:7f00:1", "a loopback address (127.0.0.1) in IPv6 form"),
    ("::ffff:169.254.169.254", "a link-local address (169.254.169.254) in IPv6 form"),
    ("::ffff:10.0.0.1", "a private address (10.0.0.1) in IPv6 form"),
    ("64:ff9b::127.0.0.1", "a loopback address (127.0.0.1) in IPv6 form"),  # NAT64
    ("64:ff9b:1::1", "a local-use NAT64 address"),
    ("2002:7f00:1::1", "a loopback address (127.0.0.1) in IPv6 form"),  # 6to4
    ("2002:c0a8:101::1", "a private address (192.168.1.1) in IPv6 form"),
    ("4000::1", "not a global unicast address"),
])
def test_refused_addresses(address, why):
    assert refusal(address) == why
    assert refusal(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize("address", [
    "1.1.1.1", "8.8.8.8", "93.184.215.14", "100.63.255.255", "100.128.0.0", "172.32.0.1", "223.255.255.255",
    "2606:4700:4700::1111", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::1",
])
def test_public_addresses_pass(address):
    assert refusal(address) is None


@pytest.mark.parametrize("host, address", [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),  # one decimal number
    ("0x7f000001", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),  # the last part fills the remaining bytes
    ("0177.0.0.1", "127.0.0.1"),  # octal
    ("0177.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("0X7F.0.0.0X1", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),  # a trailing dot
    ("0", "0.0.0.0"),
    ("0x0", "0.0.0.0"),
    ("017700000001", "127.0.0.1"),
    ("3232235777", "192.168.1.1"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("::1", "::1"),
    ("::ffff:127.0.0.1", "::ffff:7f00:1"),
])
def test_hosts_spelled_as_numbers(host, address):
    assert literal_address(host) == ipaddress.ip_address(address)
    assert refusal(literal_address(host)) is not None


@pytest.mark.parametrize("host", ["example.com", "pkg.example.org", "a.1x", "1.2.3.4.example", "localhost"])
def test_names_are_not_numbers(host):
    assert literal_address(host) is None


@pytest.mark.parametrize("host", ["1.2.3.256", "256.1", "08.0.0.1", "1.2.3.4.5", "1..2", "4294967296", "0x1ffffffff",
                                  "::gg"])
def test_numbers_that_are_no_address_are_refused(host):
    with pytest.raises(Refused, match="is not a valid IPv"):
        literal_address(host)


def test_shown_urls_carry_no_credentials():
    assert shown("https://alice:s3cret@pkg.example:8443/a/b.zip?X-Signature=abc#top") == \
        "https://pkg.example:8443/a/b.zip?…"
    assert shown("http://token@pkg.example/b.zip") == "http://pkg.example/b.zip"
    assert shown("http://[::1") == "http://…"
    # An unencoded '/' in a password ends the host part early: nothing after the scheme is shown.
    assert shown("http://alice:pa/ss@pkg.example/x.zip") == "http://…"
    assert shown("http://alice:123/ss@pkg.example/x.zip") == "http://…"


@pytest.fixture
def no_connections(monkeypatch):
    """Fail the test on any connection attempt (only loopback may ever be reached)."""
    attempts = []

    def guard(address, *args, **kwargs):
        attempts.append(address)
        raise AssertionError(f"a connection to {address} was attempted")

    monkeypatch.setattr(socket, "create_connection", guard)
    return attempts


@pytest.mark.parametrize("url, words", [
    ("http://127.0.0.1:9/x.zip", "127.0.0.1 is a loopback address"),
    ("http://2130706433/x.zip", "2130706433 (127.0.0.1) is a loopback address"),
    ("http://0x7f.1/x.zip", "0x7f.1 (127.0.0.1) is a loopback address"),
    ("http://[::1]:8080/x.zip", "::1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]/x.zip", "(127.0.0.1) in IPv6 form"),
    ("http://[fe80::1%25eth0]/x.zip", "is a link-local address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    ("http://0.0.0.0:5432/", "0.0.0.0 is an unspecified ('this network') address"),
    ("http://100.64.1.1/x.zip", "100.64.1.1 is a shared (carrier-grade NAT) address"),
    ("http://%31%32%37.0.0.1/x.zip", "127.0.0.1 is a loopback address"),  # percent-encoded host
    ("HTTP://127.0.0.1/x.zip", "127.0.0.1 is a loopback address"),
    ("ftp://pkg.example/x.zip", "only http:// and https:// URLs are allowed"),
    ("http:///x.zip", "the URL names no host"),
    ("http://pkg.example:99999/x.zip", "not a valid URL"),
    ("http://a b/x.zip", "not a valid name"),
    ("http://1.2.3.999/x.zip", "is not a valid IPv4 address"),
])
def test_refused_before_any_connection(no_connections, url, words):
    with pytest.raises(Refused) as refused:
        urlfetch.fetch(url, 1000)
    assert words in str(refused.value)
    assert no_connections == []


REAL_GETADDRINFO = socket.getaddrinfo


def fake_resolver(answers: dict, calls: list):
    """A resolver answering `answers` ({name: [addresses]}) and counting calls: no DNS traffic in tests.

    Addresses (the connection's own look-up of the checked address) are passed to the real one: no query either.
    """
    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            ipaddress.ip_address(host)  # only numbers go on to the real resolver
            return REAL_GETADDRINFO(host, port, *args, **kwargs)
        calls.append(host)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in answers[host]]
    return getaddrinfo


def test_every_resolved_address_is_checked(monkeypatch, no_connections):
    calls = []
    monkeypatch.setattr(socket, "getaddrinfo",
                        fake_resolver({"mixed.example": ["8.8.8.8", "10.0.0.7"]}, calls))
    with pytest.raises(Refused) as refused:
        urlfetch.fetch("https://user:pw@mixed.example/pkg.zip?sig=1", 1000)
    assert str(refused.value).startswith(
        "https://mixed.example/pkg.zip?…: mixed.example (10.0.0.7) is a private address; "
        "install-from-url fetches from public addresses only unless the configuration sets "
        "installer.allow_private_urls")
    assert "pw" not in str(refused.value)
    assert no_connections == [] and calls == ["mixed.example"]


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers by path: a package, redirects, an unbounded body; records every request's headers."""

    seen: list

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.seen.append((self.path, dict(self.headers)))
        if self.path.startswith("/pkg.zip"):
            self._answer(200, b"PK-data", {"Content-Length": "7"})
        elif self.path == "/moved":
            self._answer(302, b"", {"Location": "/pkg.zip", "Content-Length": "0"})
        elif self.path.startswith("/to/"):
            self._answer(302, b"", {"Location": self.path[len("/to/"):], "Content-Length": "0"})
        elif self.path == "/loop":
            self._answer(302, b"", {"Location": "/loop", "Content-Length": "0"})
        elif self.path == "/endless":  # no Content-Length: the size cap must count what arrives
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x" * 5000)
            self.close_connection = True
        elif self.path == "/trickle":
            self._trickle()
        else:
            self._answer(404, b"nothing here", {"Content-Length": "12"})

    def _answer(self, status, body, headers):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                self.server.stopping.wait(0.05)  # a slow server, not a wait of the test
        except OSError:
            pass  # the client gave up


@pytest.fixture
def recorder():
    """A loopback HTTP server: (base URL, list of (path, headers) it received)."""
    seen = []
    handler = type("Handler", (Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.stopping = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.stopping.set()
    server.shutdown()
    server.server_close()


def test_loopback_is_refused_by_default_and_fetched_when_allowed(recorder):
    base, seen = recorder
    with pytest.raises(Refused, match="127.0.0.1 is a loopback address"):
        urlfetch.fetch(f"{base}/pkg.zip", 1000)
    assert seen == []  # refused before connecting
    assert urlfetch.fetch(f"{base}/pkg.zip", 1000, allow_private=True) == b"PK-data"
    assert seen[0][1]["User-Agent"] == "ayon-server"
    assert urlfetch.fetch(f"{base}/pkg.zip/ü x?v=ö", 1000, allow_private=True) == b"PK-data"
    assert seen[1][0] == "/pkg.zip/%C3%BC%20x?v=%C3%B6"  # encoded as browsers send it


def test_the_connection_goes_to_the_checked_address(monkeypatch, recorder):
    """Resolved once: a second answer (DNS rebinding) cannot redirect the connection; Host names the host."""
    base, seen = recorder
    port = base.rsplit(":", 1)[1]
    calls = []
    answers = {"pkg.example": ["127.0.0.1"]}
    resolver = fake_resolver(answers, calls)

    def rebinding(host, *args, **kwargs):
        found = resolver(host, *args, **kwargs)
        answers["pkg.example"] = ["127.0.0.2"]  # nothing listens there: a second look-up would fail
        return found

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    assert urlfetch.fetch(f"http://pkg.example:{port}/pkg.zip", 1000, allow_private=True) == b"PK-data"
    assert calls == ["pkg.example"]
    assert seen[0][1]["Host"] == f"pkg.example:{port}"


def test_redirects_are_checked_hop_by_hop(monkeypatch, recorder):
    base, seen = recorder
    assert urlfetch.fetch(f"{base}/moved", 1000, allow_private=True) == b"PK-data"
    assert [path for path, _ in seen] == ["/moved", "/pkg.zip"]
    with pytest.raises(urlfetch.FetchFailed, match=r"/loop: more than 5 redirects"):
        urlfetch.fetch(f"{base}/loop", 1000, allow_private=True)
    with pytest.raises(Refused, match="only http:// and https:// URLs are allowed"):
        urlfetch.fetch(f"{base}/to/file:///etc/passwd", 1000, allow_private=True)

    # The loopback server stands in for a public one; where it redirects is judged like any URL.
    real = urls.refusal
    monkeypatch.setattr(urls, "refusal", lambda a: None if str(a) == "127.0.0.1" else real(a))
    seen.clear()
    for target, why in (("http://169.254.169.254/latest/meta-data/", "is a link-local address"),
                        ("http://[::ffff:10.0.0.1]/x", "a private address (10.0.0.1) in IPv6 form"),
                        ("http://0x7f.0.0.2/x", "is a loopback address")):
        with pytest.raises(Refused, match=re.escape(why)):
            urlfetch.fetch(f"{base}/to/{target}", 1000)
    assert [path for path, _ in seen] == [
        "/to/http://169.254.169.254/latest/meta-data/", "/to/http://[::ffff:10.0.0.1]/x", "/to/http://0x7f.0.0.2/x"]


def test_credentials_are_sent_to_their_origin_only_and_never_shown(monkeypatch, recorder):
    base, seen = recorder
    port = base.rsplit(":", 1)[1]
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver({"other.example": ["127.0.0.1"]}, []))
    url = f"http://alice:s%3Acret@127.0.0.1:{port}"
    assert urlfetch.fetch(f"{url}/pkg.zip", 1000, allow_private=True) == b"PK-data"
    assert seen[-1][1]["Authorization"] == "Basic " + base64.b64encode(b"alice:s:cret").decode()
    assert urlfetch.fetch(f"{url}/moved", 1000, allow_private=True) == b"PK-data"  # same origin: still sent
    assert "Authorization" in seen[-1][1]
    assert urlfetch.fetch(f"{url}/to/http://other.example:{port}/pkg.zip", 1000, allow_private=True) == b"PK-data"
    assert seen[-1][0] == "/pkg.zip" and "Authorization" not in seen[-1][1]  # another origin: dropped
    with pytest.raises(urlfetch.FetchFailed) as failed:
        urlfetch.fetch(f"{url}/missing.zip?token=t0ps3cret", 1000, allow_private=True)
    assert str(failed.value) == f"http://127.0.0.1:{port}/missing.zip?…: the server answered 404 Not Found"


def test_size_cap_and_timeouts(recorder):
    base, _ = recorder
    with pytest.raises(urlfetch.FetchFailed, match=r"/pkg.zip: 7 bytes is more than the 5 allowed"):
        urlfetch.fetch(f"{base}/pkg.zip", 5, allow_private=True)
    with pytest.raises(urlfetch.FetchFailed, match=r"/endless: more than the 1000 bytes allowed"):
        urlfetch.fetch(f"{base}/endless", 1000, allow_private=True)
    with pytest.raises(urlfetch.FetchFailed, match=r"/trickle: the download took longer than the time allowed"):
        urlfetch.fetch(f"{base}/trickle", 5000, allow_private=True, total_timeout=0.5)
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/slow.zip"
        with pytest.raises(urlfetch.FetchFailed, match=r"slow.zip: cannot fetch it \(timed out\)"):
            urlfetch.fetch(url, 1000, allow_private=True, read_timeout=0.5)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: the connection is refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/x.zip"
        with pytest.raises(urlfetch.FetchFailed, match=r"x.zip: cannot fetch it \(Connection refused\)"):
            urlfetch.fetch(url, 1000, allow_private=True)
