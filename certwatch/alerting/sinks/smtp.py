"""The email sink: a plain-text message over SMTP, STARTTLS before any password.

smtplib blocks, so a delivery runs in a worker thread with every socket operation under
the sink's timeout; a delivery that times out or is cancelled shuts the thread's socket
down so that the thread ends on its own.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any

import httpx

from certwatch.alerting.sinks.base import SNIPPET, SinkError, redact, secrets_of, utcnow
from certwatch.alerting.sinks.payloads import clip, email_message
from certwatch.config.files import PEM_FILE, check_file
from certwatch.config.sinks import EmailSettings, host_port, single_line
from certwatch.core.alerts import Notification

__all__ = ["EmailSink"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailSink(EmailSettings):
    """A plain-text email over SMTP, with STARTTLS (verified against the system trust
    store or `ca_file`) before any password is sent."""

    clock: Callable[[], datetime] = field(default=utcnow, repr=False, compare=False)

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None:
        message = email_message(n, self.sender, self.to)
        attempt = _SmtpAttempt()
        where = f"email sink '{self.name}' (smtp://{host_port(self.smtp_host, self.smtp_port)})"
        finished = False
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.to_thread(self._deliver, message, attempt)
            finished = True
        except TimeoutError:
            raise SinkError(f"{where}: no answer within {self.timeout:g}s", retryable=True) from None
        except SinkError as exc:
            raise SinkError(f"{where}: {exc.message}", exc.retryable) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(f"{rcpt}: {code} {single_line(msg)}"
                               for rcpt, (code, msg) in exc.recipients.items())
            raise SinkError(f"{where}: recipients refused: "
                            f"{clip(redact(detail, self._secrets()), SNIPPET)}",
                            retryable=all(400 <= c < 500 for c in codes)) from None
        except smtplib.SMTPResponseException as exc:
            detail = clip(redact(single_line(exc.smtp_error), self._secrets()), SNIPPET)
            raise SinkError(f"{where}: {exc.smtp_code} {detail}",
                            retryable=not 500 <= exc.smtp_code < 600) from None
        except smtplib.SMTPNotSupportedError as exc:  # e.g. no AUTH offered: configuration
            raise SinkError(f"{where}: {single_line(exc)}", retryable=False) from None
        except (smtplib.SMTPException, OSError) as exc:
            detail = clip(redact(str(exc) or type(exc).__name__, self._secrets()), SNIPPET)
            raise SinkError(f"{where}: {type(exc).__name__}: {detail}", retryable=True) from None
        finally:
            if not finished:
                # Timed out or cancelled: wake the worker thread blocked on its socket
                # (the thread is not ours to cancel); it then ends on its own.
                attempt.abort()

    def _secrets(self) -> tuple[str, ...]:
        return secrets_of(self.password)

    def _deliver(self, message: EmailMessage, attempt: _SmtpAttempt) -> None:
        """Blocking: runs in a worker thread, every socket operation under `timeout`."""
        if self.ca_file is not None:
            check_file(self.ca_file, PEM_FILE)  # OSError: a delivery error like any other
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        # local_hostname: smtplib's default, socket.getfqdn(), may block on DNS.
        smtp = _SMTP(attempt, self.smtp_host, self.smtp_port, timeout=self.timeout,
                     local_hostname=socket.gethostname() or "certwatch")
        try:
            smtp.ehlo()
            if self.starttls:
                if not smtp.has_extn("starttls"):
                    raise SinkError("the server does not offer STARTTLS", retryable=False)
                smtp.starttls(context=context)
                attempt.register(smtp.sock)
                smtp.ehlo()
            if self.username is not None:
                smtp.login(self.username, self.password or "")
            smtp.send_message(message, from_addr=self.sender, to_addrs=list(self.to))
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass  # the message was accepted; a rude goodbye changes nothing
        finally:
            smtp.close()


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP that hands its socket to the attempt before waiting for the greeting
    (the constructor connects; passing the host there also sets the name STARTTLS checks)."""

    def __init__(self, attempt: _SmtpAttempt, host: str, port: int, **kwargs: Any) -> None:
        self._attempt = attempt
        super().__init__(host, port, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self._attempt.register(sock)
        return sock


class _SmtpAttempt:
    """Lets the event loop wake a worker thread blocked on its SMTP socket."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._aborted = False
        self._lock = threading.Lock()

    def register(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            aborted = self._aborted
        if aborted:
            self._shutdown(sock)

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            sock = self._sock
        self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket | None) -> None:
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
