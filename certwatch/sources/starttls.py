"""STARTTLS dialogues: one small function per protocol.

Each takes the plaintext stream and returns once the server has agreed to start TLS;
the caller then runs the handshake on the same connection. A server that does not offer
STARTTLS, or answers something unexpected, raises :class:`StartTLSError`. The caller
bounds the whole dialogue with a deadline, and the stream reader's line limit bounds
how much a garbage-spewing peer can make us buffer.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

__all__ = ["DIALOGUES", "StartTLSError"]

# Sent where a protocol wants a client name; .invalid is reserved and never resolves.
CLIENT_NAME = "certwatch.invalid"
MAX_REPLY_LINES = 100  # a multi-line reply longer than this is not a real server
MAX_STANZA_BYTES = 64 * 1024


class StartTLSError(Exception):
    """The server did not agree to STARTTLS; the message quotes what it said."""


Dialogue = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[None]]


async def _line(reader: asyncio.StreamReader) -> str:
    raw = await reader.readline()
    if not raw:
        raise StartTLSError("server closed the connection")
    return raw.decode("latin-1").rstrip("\r\n")


async def _reply(reader: asyncio.StreamReader) -> tuple[str, list[str]]:
    """Reads an SMTP/FTP style reply ("250-..." continued, "250 ..." last)."""
    lines = []
    for _ in range(MAX_REPLY_LINES):
        line = await _line(reader)
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return line[:3], lines
    raise StartTLSError(f"reply longer than {MAX_REPLY_LINES} lines")


def _quote(text: str, limit: int = 120) -> str:
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


async def _send(writer: asyncio.StreamWriter, text: str | bytes) -> None:
    writer.write(text.encode("ascii") if isinstance(text, str) else text)
    await writer.drain()


async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server_name: str) -> None:
    code, lines = await _reply(reader)
    if code != "220":
        raise StartTLSError(f"SMTP greeting was {_quote(lines[-1])}")
    await _send(writer, f"EHLO {CLIENT_NAME}\r\n")
    code, lines = await _reply(reader)
    if code != "250":
        raise StartTLSError(f"SMTP EHLO answered {_quote(lines[-1])}")
    if not any(line[4:].strip().upper() == "STARTTLS" for line in lines[1:]):
        raise StartTLSError("SMTP server does not offer STARTTLS")
    await _send(writer, "STARTTLS\r\n")
    code, lines = await _reply(reader)
    if code != "220":
        raise StartTLSError(f"SMTP STARTTLS answered {_quote(lines[-1])}")


async def imap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server_name: str) -> None:
    greeting = await _line(reader)
    if not greeting.upper().startswith("* OK"):
        raise StartTLSError(f"IMAP greeting was {_quote(greeting)}")
    await _send(writer, "cw1 STARTTLS\r\n")
    for _ in range(MAX_REPLY_LINES):  # skip untagged responses
        line = await _line(reader)
        if line.startswith("cw1 "):
            if line[4:].upper().startswith("OK"):
                return
            raise StartTLSError(f"IMAP STARTTLS answered {_quote(line)}")
    raise StartTLSError("IMAP server never answered STARTTLS")


async def pop3(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server_name: str) -> None:
    greeting = await _line(reader)
    if not greeting.startswith("+OK"):
        raise StartTLSError(f"POP3 greeting was {_quote(greeting)}")
    await _send(writer, "STLS\r\n")
    answer = await _line(reader)
    if not answer.startswith("+OK"):
        raise StartTLSError(f"POP3 STLS answered {_quote(answer)}")


async def ftp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server_name: str) -> None:
    code, lines = await _reply(reader)
    if code != "220":
        raise StartTLSError(f"FTP greeting was {_quote(lines[-1])}")
    await _send(writer, "AUTH TLS\r\n")
    code, lines = await _reply(reader)
    if code != "234":
        raise StartTLSError(f"FTP AUTH TLS answered {_quote(lines[-1])}")


# LDAPMessage { messageID 1, extendedReq [APPLICATION 23] { requestName [0] StartTLS OID } }
_LDAP_STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
_LDAP_STARTTLS_REQUEST = (
    b"\x30" + bytes([5 + 2 + len(_LDAP_STARTTLS_OID)])
    + b"\x02\x01\x01"
    + b"\x77" + bytes([2 + len(_LDAP_STARTTLS_OID)])
    + b"\x80" + bytes([len(_LDAP_STARTTLS_OID)]) + _LDAP_STARTTLS_OID
)


async def _ber_element(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Reads one BER tag-length-value with a definite length of at most 64 KiB."""
    tag, first = await reader.readexactly(2)
    if first & 0x80:
        count = first & 0x7F
        if not 1 <= count <= 3:
            raise StartTLSError("LDAP answer is not BER")
        length = int.from_bytes(await reader.readexactly(count), "big")
    else:
        length = first
    if length > MAX_STANZA_BYTES:
        raise StartTLSError("LDAP answer is too large")
    return tag, await reader.readexactly(length)


def _ber_children(data: bytes) -> list[tuple[int, bytes]]:
    children, offset = [], 0
    while offset + 2 <= len(data):
        tag, length = data[offset], data[offset + 1]
        offset += 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(data[offset:offset + count], "big")
            offset += count
        children.append((tag, data[offset:offset + length]))
        offset += length
    return children


async def ldap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server_name: str) -> None:
    await _send(writer, _LDAP_STARTTLS_REQUEST)
    try:
        tag, body = await _ber_element(reader)
    except asyncio.IncompleteReadError:
        raise StartTLSError("LDAP server closed the connection") from None
    children = _ber_children(body) if tag == 0x30 else []
    response = children[1] if len(children) > 1 else (0, b"")
    if response[0] != 0x78:  # [APPLICATION 24] ExtendedResponse
        raise StartTLSError("LDAP server sent no ExtendedResponse to StartTLS")
    fields = _ber_children(response[1])
    if not fields or fields[0][0] != 0x0A:
        raise StartTLSError("LDAP ExtendedResponse has no resultCode")
    result_code = int.from_bytes(fields[0][1], "big")
    if result_code != 0:
        message = fields[2][1].decode("utf-8", "replace") if len(fields) > 2 else ""
        raise StartTLSError(f"LDAP StartTLS refused with resultCode {result_code} {_quote(message)}")


_POSTGRES_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


async def postgres(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server_name: str) -> None:
    await _send(writer, _POSTGRES_SSL_REQUEST)
    try:
        answer = await reader.readexactly(1)
    except asyncio.IncompleteReadError:
        raise StartTLSError("PostgreSQL server closed the connection") from None
    if answer != b"S":
        raise StartTLSError(f"PostgreSQL answered {answer!r} to SSLRequest (SSL not enabled)")


async def _read_until(reader: asyncio.StreamReader, *markers: bytes) -> bytes:
    """Reads until one of the markers has been seen, or MAX_STANZA_BYTES."""
    data = b""
    while not any(marker in data for marker in markers):
        if len(data) > MAX_STANZA_BYTES:
            raise StartTLSError("XMPP server sent too much without the expected element")
        chunk = await reader.read(4096)
        if not chunk:
            raise StartTLSError("XMPP server closed the connection")
        data += chunk
    return data


async def xmpp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server_name: str) -> None:
    await _send(writer, (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        "xmlns:stream='http://etherx.jabber.org/streams' "
        f"to='{server_name}' version='1.0'>"
    ))
    features = await _read_until(reader, b"</stream:features>", b"</stream:stream>")
    if b"urn:ietf:params:xml:ns:xmpp-tls" not in features:
        raise StartTLSError("XMPP server does not offer STARTTLS")
    await _send(writer, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    answer = await _read_until(reader, b"<proceed", b"<failure", b"</stream:stream>")
    if b"<proceed" not in answer:
        raise StartTLSError("XMPP server refused STARTTLS")


# MySQL and MariaDB: the server speaks first (Protocol::HandshakeV10); a client that
# wants TLS answers with an SSLRequest (the first 32 bytes of a handshake response, with
# CLIENT_SSL set) and the handshake follows at once on the same connection.
_MYSQL_CLIENT_SSL = 0x0800
# LONG_PASSWORD | PROTOCOL_41 | SSL | SECURE_CONNECTION: what every server since 4.1 speaks.
_MYSQL_CLIENT_CAPABILITIES = 0x0001 | 0x0200 | _MYSQL_CLIENT_SSL | 0x8000
_MYSQL_SSL_REQUEST = (
    (32).to_bytes(3, "little") + b"\x01"  # payload length, sequence id 1
    + _MYSQL_CLIENT_CAPABILITIES.to_bytes(4, "little")
    + (1 << 24).to_bytes(4, "little")  # max packet size
    + b"\x21"  # character set 33, utf8_general_ci
    + bytes(23)
)


async def _mysql_packet(reader: asyncio.StreamReader) -> bytes:
    """One MySQL packet's payload, at most MAX_STANZA_BYTES."""
    try:
        header = await reader.readexactly(4)
        length = int.from_bytes(header[:3], "little")
        if length > MAX_STANZA_BYTES:
            raise StartTLSError(f"server announced a {length}-byte greeting: not a MySQL server?")
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise StartTLSError("MySQL server closed the connection") from None


async def mysql(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server_name: str) -> None:
    greeting = await _mysql_packet(reader)
    if greeting[:1] == b"\xff":  # an ERR packet: too many connections, host blocked, ...
        code = int.from_bytes(greeting[1:3], "little")
        message = greeting[3:].decode("utf-8", "replace")
        raise StartTLSError(f"MySQL server refused the connection: error {code} {_quote(message)}")
    if greeting[:1] != b"\x0a":
        raise StartTLSError(f"MySQL greeting is not protocol version 10 ({_quote(repr(greeting[:16]))})")
    version, nul, rest = greeting[1:].partition(b"\x00")
    if not nul or len(rest) < 15:  # connection id 4, auth data 8, filler 1, capabilities 2
        raise StartTLSError("MySQL greeting is truncated")
    capabilities = int.from_bytes(rest[13:15], "little")
    if not capabilities & _MYSQL_CLIENT_SSL:
        raise StartTLSError(f"MySQL server {_quote(version.decode('latin-1'))} does not offer "
                            "TLS (CLIENT_SSL is off: no ssl_cert configured, or TLS disabled)")
    await _send(writer, _MYSQL_SSL_REQUEST)


DIALOGUES: dict[str, Dialogue] = {
    "smtp": smtp,
    "imap": imap,
    "pop3": pop3,
    "ftp": ftp,
    "ldap": ldap,
    "postgres": postgres,
    "xmpp": xmpp,
    "mysql": mysql,
}
