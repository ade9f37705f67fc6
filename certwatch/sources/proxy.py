"""Reaching an endpoint through an HTTP CONNECT proxy (RFC 9110 section 9.3.6).

The CONNECT names the endpoint's host (an A-label or an IP literal), so the proxy
resolves it and certwatch does no DNS of its own for the endpoint. Once the proxy
answers 2xx the connection is a byte tunnel to the endpoint: a STARTTLS dialogue and the
TLS handshake run on it exactly as on a direct connection, and the proxy sees neither
the certificate nor anything inside TLS.

The proxy's refusals are classified here, in one place (:func:`_refusal`):
    proxy_auth                 401 or 407: credentials missing, refused, or of a kind
                               certwatch does not speak (only Basic)
    proxy_denied               403: the proxy's rules do not allow this target or port
    proxy_target_unreachable   500, 502, 503, 504: the proxy could not reach the target
                               (refused, no route, its DNS failed, timed out)
    proxy_error                anything else: another status, or an answer that is not HTTP
Reaching the proxy itself fails as any connection does (refused, unreachable, timeout,
dns for the proxy's own name), in the phase `proxy`.
"""

from __future__ import annotations

import asyncio
import base64
import re

from certwatch.core.inventory import Proxy
from certwatch.core.vocabulary import ErrorKind

__all__ = ["ProxyError", "open_tunnel"]

_STATUS_LINE = re.compile(r"HTTP/1\.[01] (\d{3})(?: (.*))?")
_UNREACHABLE = frozenset({500, 502, 503, 504})  # tinyproxy says 500 "Unable to connect"
MAX_HEADER_BYTES = 64 * 1024


class ProxyError(Exception):
    """The proxy did not open the tunnel; `kind` says why for machines."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_request(proxy: Proxy, host: str, port: int) -> bytes:
    authority = _authority(host, port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", "User-Agent: certwatch"]
    if proxy.username is not None:
        token = f"{proxy.username}:{proxy.password or ''}".encode()
        lines.append(f"Proxy-Authorization: Basic {base64.b64encode(token).decode('ascii')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _quote(text: str, limit: int = 100) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def _refusal(status: int, reason: str, headers: dict[str, str], proxy: Proxy,
             authority: str) -> ProxyError:
    """What a non-2xx answer to CONNECT means, in kind and words."""
    answer = f"{status} {reason}".strip()
    if status in (401, 407):
        scheme = headers.get("proxy-authenticate", "").split(" ", 1)[0]
        if scheme and scheme.lower() != "basic":
            why = f"it asks for {_quote(scheme)} authentication; certwatch speaks only Basic"
        elif proxy.username is None:
            why = "it requires credentials: set proxy_username and proxy_password_env"
        else:
            why = f"it refused the credentials of {_quote(proxy.username)}"
        return ProxyError(ErrorKind.PROXY_AUTH, f"proxy answered {answer}: {why}")
    if status == 403:
        return ProxyError(ErrorKind.PROXY_DENIED, f"proxy does not allow a tunnel to "
                                                  f"{authority}: {answer}")
    detail = f" ({_quote(headers['x-squid-error'])})" if "x-squid-error" in headers else ""
    if status in _UNREACHABLE:
        return ProxyError(ErrorKind.PROXY_TARGET_UNREACHABLE,
                          f"proxy could not reach {authority}: {answer}{detail}")
    return ProxyError(ErrorKind.PROXY_ERROR, f"proxy answered CONNECT with {answer}{detail}")


async def _line(reader: asyncio.StreamReader) -> str:
    try:
        return (await reader.readline()).decode("latin-1")  # bounded by the reader's limit
    except ValueError:
        raise ProxyError(ErrorKind.PROXY_ERROR, "proxy sent an overlong line in its answer "
                                                "to CONNECT") from None


async def _answer(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    """The status and headers of the proxy's answer; what follows stays in `reader`."""
    first = await _line(reader)
    if not first:
        raise ProxyError(ErrorKind.CLOSED, "proxy closed the connection without answering CONNECT")
    first = first.rstrip("\r\n")
    match = _STATUS_LINE.fullmatch(first)
    if match is None:
        raise ProxyError(ErrorKind.PROXY_ERROR, f"proxy did not answer with HTTP: {_quote(first)}")
    headers: dict[str, str] = {}
    size = 0
    while (line := await _line(reader)).rstrip("\r\n"):  # a blank line (or EOF) ends them
        size += len(line)
        if size > MAX_HEADER_BYTES:
            raise ProxyError(ErrorKind.PROXY_ERROR, "proxy sent an overlong answer to CONNECT")
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return int(match.group(1)), (match.group(2) or "").strip(), headers


async def open_tunnel(proxy: Proxy, host: str, port: int, *,
                      limit: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to host:port through the proxy; raises ProxyError or OSError.
    The caller bounds it with a deadline."""
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port, limit=limit)
    try:
        writer.write(connect_request(proxy, host, port))
        await writer.drain()
        status, reason, headers = await _answer(reader)
        if not 200 <= status < 300:
            raise _refusal(status, reason, headers, proxy, _authority(host, port))
    except BaseException:
        writer.transport.abort()  # never waits for a peer that may not answer
        raise
    return reader, writer
