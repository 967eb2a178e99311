"""Downloads from a URL a client chose, without opening the server's own network to that client.

install-from-url makes the server connect where its caller says. Unless the
configuration allows it (`installer.allow_private_urls`), only public
addresses are fetched from: every address the host resolves to must be
public, and the connection goes to the address that was checked, so a DNS
answer that changes between the check and the connection cannot lead
elsewhere. Redirects are checked the same way, hop by hop. Hosts spelled as
numbers are read the way browsers read them (2130706433, 0x7f.1 and 0177.1
are 127.0.0.1), without asking DNS. Errors show the URL without its user
name, password and query (a signed URL's query is a credential).
"""

import base64
import functools
import http.client
import ipaddress
import re
import socket
import ssl
import time
from urllib.parse import quote, unquote, urljoin, urlsplit

from server.core.errors import AyonError, shown_url

CONNECT_TIMEOUT = 10.0  # seconds to establish a connection (each address tried)
READ_TIMEOUT = 60.0  # seconds the server may stay silent while answering
TOTAL_TIMEOUT = 15 * 60.0  # seconds for the whole download, so a trickling server cannot hold a worker
MAX_REDIRECTS = 5
CHUNK = 256 * 1024
SCHEMES = {"http": 80, "https": 443}
_PATH_SAFE = "/%:@!$&'()*+,;=~-._[]"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(AyonError):
    """A URL the server will not fetch from; the message says why (a client error)."""


class FetchFailed(AyonError):
    """The remote server could not be reached or did not hand over the content."""


def _networks(rows):
    return [(ipaddress.ip_network(network), why) for network, why in rows]


# IANA's special-purpose registries, plus multicast and the reserved rest: nothing here is a public server.
_V4_SPECIAL = _networks([
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol address"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a 6to4 relay address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),  # 255.255.255.255 (broadcast) included
])
_V6_SPECIAL = _networks([
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("::/96", "an IPv4-compatible address (deprecated)"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("2001::/32", "a Teredo address"),
    ("2001:2::/48", "a benchmarking address"),
    ("2001:10::/28", "an ORCHID address"),
    ("2001:20::/28", "an ORCHID address"),
    ("2001:db8::/32", "a documentation address"),
    ("3fff::/20", "a documentation address"),
    ("fc00::/7", "a unique-local address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address (deprecated)"),
    ("ff00::/8", "a multicast address"),
])
_V6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def refusal(address: Address | str) -> str | None:
    """Why the server must not connect to `address` ("a loopback address"...), or None for a public one.

    IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by that address.
    """
    if isinstance(address, str):
        address = ipaddress.ip_address(address)
    if address.version == 4:
        return next((why for network, why in _V4_SPECIAL if address in network), None)
    embedded = address.ipv4_mapped or address.sixtofour
    if embedded is None and address in _NAT64:
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if embedded is not None:
        why = refusal(embedded)
        return f"{why} ({embedded}) in IPv6 form" if why else None
    why = next((why for network, why in _V6_SPECIAL if address in network), None)
    if why is None and address not in _V6_GLOBAL_UNICAST:
        why = "not a global unicast address"
    return why


_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")


def _ipv4_part(part: str) -> int | None:
    if part[:2] in ("0x", "0X"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8) if re.fullmatch(r"[0-7]+", part) else None
    return int(part)


def literal_address(host: str) -> Address | None:
    """The address a host spelled as a number stands for, or None when it is a name.

    IPv4 as browsers read it (the WHATWG URL standard): one to four parts, each
    decimal, octal (leading 0) or hexadecimal (0x), the last filling the
    remaining bytes, so 2130706433, 0x7f.1 and 0177.0.0.1 are all 127.0.0.1.
    A host whose last part is a number but is no valid address raises Refused.
    """
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise Refused(f"{host!r} is not a valid IPv6 address") from None
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # a trailing dot
    if not _IPV4_PART.fullmatch(parts[-1]):
        return None  # a name
    numbers = [_ipv4_part(part) if _IPV4_PART.fullmatch(part) else None for part in parts]
    if len(parts) > 4 or None in numbers or any(n > 255 for n in numbers[:-1]) \
            or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise Refused(f"{host!r} is not a valid IPv4 address")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


shown = shown_url  # see server/core/errors.py


class _Target:
    """A URL taken apart: scheme, host, port, request target and the Basic credentials it carries."""

    def __init__(self, url: str):
        self.url = url
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise Refused(f"{shown(url)}: not a valid URL (host or port)") from None
        if parts.scheme not in SCHEMES:
            raise Refused(f"{shown(url)}: only http:// and https:// URLs are fetched")
        host = unquote(parts.hostname or "")
        if host.startswith("[") or not host:
            raise Refused(f"{shown(url)}: the URL names no host")
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                raise Refused(f"{shown(url)}: the host is not a valid name") from None
        if not re.fullmatch(r"[A-Za-z0-9._:%-]+", host):
            raise Refused(f"{shown(url)}: the host is not a valid name")
        self.scheme, self.host = parts.scheme, host.lower()
        self.port = port or SCHEMES[parts.scheme]
        # As browsers send it: non-ASCII and spaces percent-encoded, existing escapes kept.
        self.path = quote(parts.path or "/", safe=_PATH_SAFE) + (
            f"?{quote(parts.query, safe=_PATH_SAFE + '?')}" if parts.query else "")
        self.credentials = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.credentials = base64.b64encode(pair.encode("utf-8")).decode("ascii")
        self.origin = (self.scheme, self.host, self.port)


def resolve(host: str, port: int) -> list[Address]:
    """Every address the host stands for: itself when spelled as a number, else what the resolver answers."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    found = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


def checked_addresses(target: _Target, allow_private: bool) -> list[Address]:
    """The host's addresses, all of them public unless private ones are allowed."""
    try:
        addresses = resolve(target.host, target.port)
    except Refused as exc:
        raise Refused(f"{shown(target.url)}: {exc}") from None
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise FetchFailed(f"{shown(target.url)}: cannot resolve {target.host} ({reason})") from None
    if not allow_private:
        for address in addresses:
            why = refusal(address)
            if why:
                named = target.host if target.host == str(address) else f"{target.host} ({address})"
                raise Refused(f"{shown(target.url)}: {named} is {why}; install-from-url fetches from public "
                              "addresses only unless the configuration sets installer.allow_private_urls")
    return addresses


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to an address checked beforehand; the Host header still names the host."""

    def __init__(self, host: str, port: int, address: Address, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def _socket(self) -> socket.socket:
        sock = socket.create_connection((str(self.address), self.port), CONNECT_TIMEOUT)
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def connect(self) -> None:
        self.sock = self._socket()


class _PinnedHTTPS(_PinnedHTTP):
    """The same over TLS; the certificate is verified against the host's name."""

    def connect(self) -> None:
        sock = self._socket()
        try:
            self.sock = _tls().wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()  # loads the system's CAs: once, and only when needed


def _open(target: _Target, addresses: list[Address], read_timeout: float, deadline: float, headers: dict):
    last: Exception | None = None
    for address in addresses:
        if time.monotonic() > deadline:
            break
        kind = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
        connection = kind(target.host, target.port, address, read_timeout)
        try:
            connection.request("GET", target.path, headers=headers)
            return connection, connection.getresponse()
        except (http.client.InvalidURL, UnicodeError):
            connection.close()
            raise Refused(f"{shown(target.url)}: the URL has characters a request cannot carry") from None
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            last = exc
    raise FetchFailed(f"{shown(target.url)}: cannot fetch it ({_reason(last)})")


def _reason(exc: Exception | None) -> str:
    if exc is None or isinstance(exc, TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def fetch(url: str, limit: int, allow_private: bool = False, read_timeout: float = READ_TIMEOUT,
          total_timeout: float = TOTAL_TIMEOUT) -> bytes:
    """The body a GET of `url` answers with, at most `limit` bytes, following checked redirects."""
    deadline = time.monotonic() + total_timeout
    target = _Target(url)
    first_origin, credentials = target.origin, target.credentials
    for _hop in range(MAX_REDIRECTS + 1):
        headers = {"User-Agent": "ayon-server", "Accept-Encoding": "identity"}
        # Credentials go to the origin they were written for, never to where it redirects.
        auth = target.credentials or (credentials if target.origin == first_origin else None)
        if auth:
            headers["Authorization"] = f"Basic {auth}"
        connection, answer = _open(target, checked_addresses(target, allow_private), read_timeout, deadline, headers)
        try:
            if answer.status in (301, 302, 303, 307, 308) and answer.getheader("Location"):
                target = _Target(urljoin(target.url, answer.getheader("Location")))
                continue
            if answer.status != 200:
                reason = re.sub(r"[^\x20-\x7e]", "", answer.reason or "")[:80]
                raise FetchFailed(f"{shown(target.url)}: the server answered {answer.status} {reason}".rstrip())
            return _read(answer, target, limit, deadline)
        finally:
            connection.close()
    raise FetchFailed(f"{shown(url)}: more than {MAX_REDIRECTS} redirects")


def _read(answer, target: _Target, limit: int, deadline: float) -> bytes:
    declared = answer.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise FetchFailed(f"{shown(target.url)}: {declared} bytes is more than the {limit} allowed")
    chunks, size = [], 0
    try:
        while chunk := answer.read1(min(CHUNK, limit + 1 - size)):  # one receive at a time: deadline checked
            size += len(chunk)
            if size > limit:
                raise FetchFailed(f"{shown(target.url)}: more than the {limit} bytes allowed")
            if time.monotonic() > deadline:
                raise FetchFailed(f"{shown(target.url)}: the download took longer than the time allowed")
            chunks.append(chunk)
    except (OSError, http.client.HTTPException) as exc:
        raise FetchFailed(f"{shown(target.url)}: the download broke off ({_reason(exc)})") from None
    return b"".join(chunks)
