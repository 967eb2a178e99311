"""Connections to a URL someone else chose: one URL target, one address policy, one way a URL is shown.

install-from-url (server/urlfetch.py) and the maintenance webhook
(maintenance/notify.py) both connect where a client or the configuration
says. Both take the URL apart the same way (`Target`), resolve its host once,
refuse any address that is not public unless their own configuration key
allows it (`Policy`, `checked_addresses`), and connect to the address that was
checked (`connection`) while `Host` and TLS still use the name, so a DNS
answer that changes between the check and the connection cannot lead
elsewhere. Hosts spelled as numbers are read the way browsers read them
(2130706433, 0x7f.1 and 0177.1 are 127.0.0.1), without asking DNS. Messages
show a URL without its user name, password, query and fragment (`shown`: a
signed URL's or a webhook's query is a credential); `masked` is the one other
way, for a URL an administrator reads back whole (AYON_POSTGRES_URL).
"""

import base64
import functools
import http.client
import ipaddress
import re
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from server.core.errors import AyonError

SCHEMES = {"http": 80, "https": 443}
_PATH_SAFE = "/%:@!$&'()*+,;=~-._[]"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(AyonError):
    """A URL that is not connected to; the message says why (the caller's or the configuration's mistake).

    `reason` is the message without the URL, for a caller that names the URL itself.
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


class Unreachable(AyonError):
    """The URL's host could not be resolved or its server reached; `reason` as for Refused."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def refused(url: str, reason: str) -> Refused:
    return Refused(f"{shown(url)}: {reason}", reason)


def unreachable(url: str, reason: str) -> Unreachable:
    return Unreachable(f"{shown(url)}: {reason}", reason)


def shown(url: str) -> str:
    """A URL as messages and log lines show it: no user name, password, query or fragment.

    When the URL is ambiguous (an unencoded '/' in a password puts the rest of
    it in the port and the path), only what is surely no credential is shown.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is no number)
        ambiguous = "@" in parts.path
    except ValueError:
        ambiguous = True
    if ambiguous:
        return f"{url.partition(':')[0][:10]}://…" if "://" in url else "the URL"
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


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


def masked(url: str) -> str:
    """A URL whole but for its password, in the user part or as a `password` query parameter: ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name == "password" for name, _ in pairs):
        query = urlencode([(name, "***" if name == "password" else value) for name, value in pairs], safe="*/,:")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class Target:
    """A URL taken apart: scheme, host, port, request target and the Basic credentials it carries.

    Raises Refused for what no request could be sent to (another scheme, no host, a bad port or name).
    """

    def __init__(self, url: str):
        self.url = url
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise refused(url, "not a valid URL (host or port)") from None
        if parts.scheme.lower() not in SCHEMES:
            raise refused(url, "only http:// and https:// URLs are allowed")
        scheme = parts.scheme.lower()
        host = unquote(parts.hostname or "")
        if host.startswith("[") or not host:
            raise refused(url, "the URL names no host")
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                raise refused(url, "the host is not a valid name") from None
        if not re.fullmatch(r"[A-Za-z0-9._:%-]+", host):
            raise refused(url, "the host is not a valid name")
        try:
            literal_address(host)  # a number that is no address is refused here, before any look-up
        except Refused as exc:
            raise refused(url, exc.reason) from None
        self.scheme, self.host = scheme, host.lower()
        self.https = scheme == "https"
        self.port = port or SCHEMES[scheme]
        # As browsers send it: non-ASCII and spaces percent-encoded, existing escapes kept.
        self.path = quote(parts.path or "/", safe=_PATH_SAFE) + (
            f"?{quote(parts.query, safe=_PATH_SAFE + '?')}" if parts.query else "")
        self.credentials = self.password = None
        if parts.username is not None:
            self.password = unquote(parts.password or "")
            pair = f"{unquote(parts.username)}:{self.password}"
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


@dataclass(frozen=True)
class Policy:
    """Where one kind of outgoing request may go: public addresses, or any when `allow_private`.

    `goes` says in messages where the requests go ("install-from-url fetches from"), `opt_in` the
    configuration key that allows non-public addresses.
    """

    goes: str
    opt_in: str
    allow_private: bool = False


def checked_addresses(target: Target, policy: Policy) -> list[Address]:
    """The host's addresses, resolved once, all of them public unless the policy allows private ones."""
    try:
        addresses = resolve(target.host, target.port)
    except Refused as exc:
        raise refused(target.url, exc.reason) from None
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise unreachable(target.url, f"cannot resolve {target.host} ({reason})") from None
    if not policy.allow_private:
        for address in addresses:
            why = refusal(address)
            if why:
                named = target.host if target.host == str(address) else f"{target.host} ({address})"
                raise refused(target.url, f"{named} is {why}; {policy.goes} public addresses only unless the "
                                          f"configuration sets {policy.opt_in}")
    return addresses


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to an address checked beforehand; the Host header still names the host."""

    def __init__(self, host: str, port: int, address: Address, timeout: float, connect_timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address, self.connect_timeout = address, connect_timeout

    def _socket(self) -> socket.socket:
        sock = socket.create_connection((str(self.address), self.port), self.connect_timeout)
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


def connection(target: Target, address: Address, timeout: float, connect_timeout: float) -> http.client.HTTPConnection:
    """An HTTP(S) connection (not yet open) to `address`, checked before, for `target`'s host."""
    kind = _PinnedHTTPS if target.https else _PinnedHTTP
    return kind(target.host, target.port, address, timeout, connect_timeout)
