"""Downloads from a URL a client chose, without opening the server's own network to that client.

install-from-url makes the server connect where its caller says. Unless the
configuration allows it (`installer.allow_private_urls`), only public
addresses are fetched from, under the address policy every outgoing request
shares (server/core/urls.py: resolved once, every address public, the
connection to the checked address). Redirects are checked the same way, hop
by hop. Errors show the URL without its user name, password and query (a
signed URL's query is a credential).
"""

import http.client
import re
import time
from urllib.parse import urljoin

from server.core.urls import Policy, Refused, Target, checked_addresses, connection, literal_address, refusal, shown
from server.core.urls import Unreachable as FetchFailed  # the remote server could not be reached or hand it over

__all__ = ["FetchFailed", "Refused", "fetch", "literal_address", "refusal", "shown"]

CONNECT_TIMEOUT = 10.0  # seconds to establish a connection (each address tried)
READ_TIMEOUT = 60.0  # seconds the server may stay silent while answering
TOTAL_TIMEOUT = 15 * 60.0  # seconds for the whole download, so a trickling server cannot hold a worker
MAX_REDIRECTS = 5
CHUNK = 256 * 1024


def policy(allow_private: bool) -> Policy:
    return Policy("install-from-url fetches from", "installer.allow_private_urls", allow_private)


def _open(target: Target, addresses: list, read_timeout: float, deadline: float, headers: dict):
    last: Exception | None = None
    for address in addresses:
        if time.monotonic() > deadline:
            break
        opened = connection(target, address, read_timeout, CONNECT_TIMEOUT)
        try:
            opened.request("GET", target.path, headers=headers)
            return opened, opened.getresponse()
        except (http.client.InvalidURL, UnicodeError):
            opened.close()
            raise Refused(f"{shown(target.url)}: the URL has characters a request cannot carry") from None
        except (OSError, http.client.HTTPException) as exc:
            opened.close()
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
    target = Target(url)
    first_origin, credentials = target.origin, target.credentials
    for _hop in range(MAX_REDIRECTS + 1):
        headers = {"User-Agent": "ayon-server", "Accept-Encoding": "identity"}
        # Credentials go to the origin they were written for, never to where it redirects.
        auth = target.credentials or (credentials if target.origin == first_origin else None)
        if auth:
            headers["Authorization"] = f"Basic {auth}"
        addresses = checked_addresses(target, policy(allow_private))
        opened, answer = _open(target, addresses, read_timeout, deadline, headers)
        try:
            if answer.status in (301, 302, 303, 307, 308) and answer.getheader("Location"):
                target = Target(urljoin(target.url, answer.getheader("Location")))
                continue
            if answer.status != 200:
                reason = re.sub(r"[^\x20-\x7e]", "", answer.reason or "")[:80]
                raise FetchFailed(f"{shown(target.url)}: the server answered {answer.status} {reason}".rstrip())
            return _read(answer, target, limit, deadline)
        finally:
            opened.close()
    raise FetchFailed(f"{shown(url)}: more than {MAX_REDIRECTS} redirects")


def _read(answer, target: Target, limit: int, deadline: float) -> bytes:
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
