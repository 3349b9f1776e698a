"""SMTP e-mail: a plain-text part and an HTML part in which all message text is escaped."""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from alerts.model import Alert
from alerts.notifiers.base import (
    NotifyError,
    PartialDelivery,
    PermanentNotifyError,
    TransientNotifyError,
    one_line,
)
from alerts.notifiers.render import digest_title, email_html, email_text
from ingest.sources.addresses import Resolver, literal, resolve_within, system_resolve

CUTOFF_POLL_S = 0.05


class EmailNotifier:
    name = "email"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sender: str,
        recipients: Sequence[str],
        security: str = "none",
        username: str | None = None,
        password: str | None = None,
        subject_prefix: str = "[finsent]",
        timeout_s: float = 10.0,
        max_examples: int = 3,
        resolve: Resolver = system_resolve,
    ) -> None:
        if not recipients:
            raise ValueError("e-mail notifier needs at least one recipient")
        self.host, self.port = host, port
        self.sender, self.recipients = sender, list(recipients)
        self.security = security
        self.username, self.password = username, password
        self.subject_prefix = subject_prefix
        self.timeout_s = timeout_s
        self.max_examples = max_examples
        self.resolve = resolve

    def batch_size(self, alerts: Sequence[Alert]) -> int:
        """All: a digest details the first alerts and lists or counts the rest, so its size is bounded."""
        return len(alerts)

    def message(self, alerts: Sequence[Alert], now: float) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = one_line(f"{self.subject_prefix} {digest_title(alerts)}", 200)
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Date"] = formatdate(now, usegmt=True)
        msg["Message-ID"] = make_msgid(domain="finsent")
        msg.set_content(email_text(alerts, self.max_examples))
        msg.add_alternative(email_html(alerts, self.max_examples), subtype="html")
        return msg

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        """Deliver within `timeout_s` as a whole: smtplib's timeout bounds each socket operation alone, so
        a server dripping its replies a byte at a time held the worker's thread as long as it liked.
        Recipients the server refused while it took the others raise PartialDelivery, once the
        message is out: sent again, it would reach the others twice."""
        msg = self.message(alerts, now)
        smtp = self._smtp()
        with Cutoff(smtp, self.timeout_s) as cutoff:
            try:
                refused = self._transmit(smtp, msg)
            except (smtplib.SMTPException, OSError) as exc:
                if cutoff.fired:
                    raise TransientNotifyError(
                        f"SMTP timeout: not complete after {self.timeout_s:g}s"
                    ) from None
                raise smtp_error(exc) from None
            finally:
                smtp.close()
        if refused:
            raise partial_delivery(refused)

    def _transmit(self, smtp: smtplib.SMTP, msg: EmailMessage) -> dict[str, tuple[int, bytes]]:
        """Connect, log in, send; the recipients refused while others took the message. No `with smtp`:
        its exit raised on a QUIT answered other than 221, after the message was accepted, and the
        message, counted failed, was sent again at every retry."""
        smtp.connect(self.host, self.port)
        if self.security == "starttls":
            smtp.starttls(context=ssl.create_default_context())
        if self.username:
            smtp.login(self.username, self.password or "")
        refused = smtp.send_message(msg)
        quit_quietly(smtp)
        return refused

    def _smtp(self) -> smtplib.SMTP:
        """A client not yet connected: `Cutoff` watches it from before the connection is made, and its
        host name is looked up within `timeout_s` too."""
        lookup = Lookup(self.resolve, time.monotonic() + self.timeout_s)
        if self.security == "ssl":
            return LookupBoundSMTPSSL(lookup, timeout=self.timeout_s, context=ssl.create_default_context())
        return LookupBoundSMTP(lookup, timeout=self.timeout_s)


class Lookup:
    """A host name's look-up on a helper thread, by the send's deadline: getaddrinfo has no timeout of
    its own, and a DNS server that did not answer held a send (and the alert worker's loop) past
    `timeout_s`, where `Cutoff` cannot reach (there is no socket yet)."""

    def __init__(self, resolve: Resolver, deadline: float) -> None:
        self.resolve, self.deadline = resolve, deadline

    def connect(self, host: str, port: int, timeout: float, source: Any) -> socket.socket:
        """The first of the host's addresses that accepts, dialled in turn as smtplib would."""
        if literal(host) is not None:
            return socket.create_connection((host, port), timeout, source)
        found = resolve_within(self.resolve, host, self.deadline - time.monotonic())
        error: OSError = OSError(f"{host} has no address")
        for ip in found:
            try:
                return socket.create_connection((str(ip), port), timeout, source)
            except OSError as e:
                error = e
        raise error


class LookupBoundSMTP(smtplib.SMTP):
    def __init__(self, lookup: Lookup, **kwargs: Any) -> None:
        self.lookup = lookup
        super().__init__(**kwargs)

    def connect(
        self, host: str = "localhost", port: int = 0, source_address: Any = None
    ) -> tuple[int, bytes]:
        # smtplib sets `_host` only when the host is given to the constructor, and SMTP_SSL and STARTTLS
        # check the certificate against it: connected later, both refused to start ("check_hostname
        # requires server_hostname"), so e-mail over TLS never left.
        self._host = host
        return super().connect(host, port, source_address)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return self.lookup.connect(host, port, timeout, self.source_address)


class LookupBoundSMTPSSL(LookupBoundSMTP, smtplib.SMTP_SSL):
    """TLS checks the certificate against the host name (`_host`), not the address dialled."""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = self.lookup.connect(host, port, timeout, self.source_address)
        return self.context.wrap_socket(sock, server_hostname=self._host)  # type: ignore[attr-defined]


class Cutoff:
    """Shuts an SMTP client's connection down once `seconds` have passed, from a thread of its own: a read
    or write blocked in it then ends at once, and the send fails (`fired` tells why)."""

    def __init__(self, smtp: smtplib.SMTP, seconds: float) -> None:
        self.smtp, self.seconds = smtp, seconds
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="smtp-cutoff", daemon=True)

    def __enter__(self) -> Cutoff:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        """After `seconds`, shut down whatever connection the client has, and again every CUTOFF_POLL_S
        until the send is over: one made just then (STARTTLS wraps the socket anew) is cut too."""
        if self._done.wait(self.seconds):
            return
        self.fired = True
        while True:
            sock = getattr(self.smtp, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the socket's own, not TLS's
            if self._done.wait(CUTOFF_POLL_S):
                return


def quit_quietly(smtp: smtplib.SMTP) -> None:
    """Say QUIT after the message was accepted, whatever the answer: the message is out, and an odd
    answer or a dropped connection now changes nothing about its delivery."""
    with contextlib.suppress(smtplib.SMTPException, OSError):
        smtp.quit()


def partial_delivery(refused: dict[str, tuple[int, bytes]]) -> PartialDelivery:
    """What the server said of each recipient it refused, codes and addresses (not secrets) named."""
    said = "; ".join(
        f"{one_line(address, 200)}: {code}{smtp_words(text)}" for address, (code, text) in refused.items()
    )
    temporary = all(400 <= code < 500 for code, _ in refused.values())
    what = " for now (4xx)" if temporary else ""
    text = f"SMTP refused {len(refused)} recipient(s){what}, not retried (the others have it): {said}"
    return PartialDelivery(one_line(text, 1000), temporary=temporary)


def smtp_error(exc: smtplib.SMTPException | OSError) -> NotifyError:
    """A 5xx answer is permanent (spam or policy 554, too large 552, bad credentials 535, unknown
    recipient 550), and so is a feature the server lacks: sent again, the message would be refused again,
    and held at the head of the queue it would block the channel for ever. A 4xx answer (greylisting, a
    full mailbox, a busy server) or a failed connection is transient."""
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentNotifyError(f"SMTP refused: {type(exc).__name__}")
    code = smtp_code(exc)
    if code is None:
        return TransientNotifyError(f"SMTP failed: {type(exc).__name__}: {one_line(str(exc), 200)}")
    answer = f"SMTP {'refused' if code >= 500 else 'failed'}: {type(exc).__name__}: {code}{smtp_text(exc)}"
    return PermanentNotifyError(answer) if code >= 500 else TransientNotifyError(answer)


def smtp_text(exc: smtplib.SMTPException | OSError) -> str:
    """The server's words with its reply code, shortened, for the log ("5.7.1 rejected as spam")."""
    if not isinstance(exc, smtplib.SMTPResponseException):
        return ""
    return smtp_words(exc.smtp_error)


def smtp_words(raw: bytes | str) -> str:
    """A server's reply text, after a space, on one line and shortened; "" when it said nothing."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return f" {one_line(text, 200)}" if text.strip() else ""


def smtp_code(exc: smtplib.SMTPException | OSError) -> int | None:
    """The server's reply code; for recipients all refused, the lowest (a 4xx one may still pass later)."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code if exc.smtp_code > 0 else None
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        return min(code for code, _ in exc.recipients.values())
    return None
