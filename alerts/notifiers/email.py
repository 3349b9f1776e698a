"""SMTP e-mail: a plain-text part and an HTML part in which all message text is escaped."""

from __future__ import annotations

import contextlib
import logging
import smtplib
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from alerts.model import Alert
from alerts.notifiers.base import (
    FollowUpResult,
    NotifyError,
    PartialDelivery,
    PermanentNotifyError,
    TransientNotifyError,
    one_line,
)
from alerts.notifiers.render import digest_title, email_html, email_text
from ingest.sources.addresses import Resolver, literal, resolve_within, system_resolve

logger = logging.getLogger(__name__)

CUTOFF_POLL_S = 0.05
# Recipients an SMTP server refused for now (4xx: greylisting, a full or busy mailbox) while it took the
# message for the others get the same message again, to them alone: first after FOLLOW_UP_FIRST_S (most
# greylisting lets a sender through that comes back after 1 to 5 minutes), the wait doubling up to
# FOLLOW_UP_MAX_S, FOLLOW_UP_TRIES times at most: tries about 1, 3, 7, 15, 23 and 31 minutes after the
# first send. At most MAX_FOLLOW_UPS messages wait so; a newer one drops the oldest.
FOLLOW_UP_FIRST_S = 60.0
FOLLOW_UP_MAX_S = 480.0
FOLLOW_UP_TRIES = 6
MAX_FOLLOW_UPS = 100


@dataclass
class FollowUp:
    """A message some recipients refused for now: sent again to `recipients` alone (the To: header and
    the Message-ID unchanged, so a mail client can tell it is the same message)."""

    msg: EmailMessage
    recipients: list[str]
    alerts: int  # the alerts the message carries: what `failed` counts
    counted: bool  # counted `failed` already (a recipient refused it for good)
    tries: int = 0
    not_before: float | None = None  # on the dispatcher's clock; set at its first `follow_up`

    def mark_counted(self) -> None:
        """Its alerts were counted `failed` already (by the dispatcher, stuck before this delivery)."""
        self.counted = True


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
        follow_up_first_s: float = FOLLOW_UP_FIRST_S,
        follow_up_max_s: float = FOLLOW_UP_MAX_S,
        follow_up_tries: int = FOLLOW_UP_TRIES,
        max_follow_ups: int = MAX_FOLLOW_UPS,
    ) -> None:
        if not recipients:
            raise ValueError("e-mail notifier needs at least one recipient")
        if not (
            follow_up_first_s > 0 and follow_up_max_s > 0 and follow_up_tries >= 0 and max_follow_ups >= 1
        ):
            raise ValueError("follow-up waits must be positive, tries and the bound not negative")
        self.host, self.port = host, port
        self.sender, self.recipients = sender, list(recipients)
        self.security = security
        self.username, self.password = username, password
        self.subject_prefix = subject_prefix
        self.timeout_s = timeout_s
        self.max_examples = max_examples
        self.resolve = resolve
        self.follow_up_first_s, self.follow_up_max_s = follow_up_first_s, follow_up_max_s
        self.follow_up_tries, self.max_follow_ups = follow_up_tries, max_follow_ups
        self.follow_ups: deque[FollowUp] = deque()  # oldest first
        self._lost = 0  # alerts of follow-ups dropped for the bound, not yet counted `failed`

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
        msg.as_bytes()  # picks the MIME boundary, kept: sent again (`follow_up`), it is the same message
        return msg

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        """Deliver within `timeout_s` as a whole: smtplib's timeout bounds each socket operation alone, so
        a server dripping its replies a byte at a time held the worker's thread as long as it liked.
        Recipients the server refused while it took the others raise PartialDelivery, once the message
        is out: sent again as a whole, it would reach the others twice. Those refused for now (4xx) get
        it later, alone (`follow_up`)."""
        msg = self.message(alerts, now)
        refused = self._deliver(msg, None)
        if refused:
            later = [address for address, (code, _) in refused.items() if 400 <= code < 500]
            follow_up = None
            if later and self.follow_up_tries > 0:
                follow_up = FollowUp(msg, later, len(alerts), counted=len(later) < len(refused))
                self._keep(follow_up)
            exc = partial_delivery(refused, retrying=follow_up is not None)
            exc.counted = follow_up.mark_counted if follow_up is not None else None
            raise exc

    def follow_up(self, now: float) -> FollowUpResult:
        """Send the oldest due follow-up again, to its recipients alone (one attempt, within `timeout_s`).
        Those refused for now again stay, and are tried after a longer wait; those now refused for good,
        and all of them once the tries are spent, will not get it (an ERROR line, counted `failed` once
        per message). A failure to reach the server keeps them all, and ends this round of follow-ups."""
        failed, self._lost = self._lost, 0
        for f in self.follow_ups:
            if f.not_before is None:  # kept by `send`, which knows no monotonic clock
                f.not_before = now + self.follow_up_first_s
        due = next((f for f in self.follow_ups if f.not_before is not None and f.not_before <= now), None)
        if due is None:
            return FollowUpResult(failed)
        due.tries += 1
        try:
            refused = self._deliver(due.msg, due.recipients, all_refused=True)
        except PermanentNotifyError as exc:
            self.follow_ups.remove(due)
            logger.error(
                "%s: %s will not get message %s: refused on its try %d: %s",
                self.name,
                addresses(due.recipients),
                message_id(due.msg),
                due.tries,
                exc,
            )
            return FollowUpResult(failed + self._lose(due), self._any_due(now))
        except NotifyError as exc:
            return FollowUpResult(failed + self._again(due, due.recipients, str(exc), now), go_on=False)
        delivered = [a for a in due.recipients if a not in refused]
        if delivered:
            logger.info(
                "%s: message %s delivered on its try %d to %s",
                self.name,
                message_id(due.msg),
                due.tries,
                addresses(delivered),
            )
        gone = {a: answer for a, answer in refused.items() if not 400 <= answer[0] < 500}
        if gone:
            logger.error(
                "%s: %s will not get message %s: refused for good on its try %d: %s",
                self.name,
                addresses(gone),
                message_id(due.msg),
                due.tries,
                refusals(gone),
            )
            failed += self._lose(due)
        later = {a: answer for a, answer in refused.items() if a not in gone}
        if later:
            failed += self._again(due, list(later), refusals(later), now)
        else:
            self.follow_ups.remove(due)
        return FollowUpResult(failed, self._any_due(now))

    def follow_ups_pending(self) -> int:
        """How many messages wait to be sent again to recipients refused for now."""
        return len(self.follow_ups)

    def abandon_follow_ups(self) -> int:
        """Give every follow-up up (the worker stops, and they are not saved): an ERROR line naming the
        recipients that will not get their message; returns the alerts to count `failed`."""
        failed, self._lost = self._lost, 0
        if self.follow_ups:
            left = sorted({a for f in self.follow_ups for a in f.recipients})
            logger.error(
                "%s: stopping with %d message(s) still to be sent again to recipients refused for now (not "
                "saved): %s will not get them",
                self.name,
                len(self.follow_ups),
                addresses(left),
            )
            failed += sum(self._lose(f) for f in self.follow_ups)
            self.follow_ups.clear()
        return failed

    def _keep(self, follow_up: FollowUp) -> None:
        """Keep a follow-up; past `max_follow_ups` the oldest will not be sent again (an error, counted
        `failed` at the next `follow_up`)."""
        while len(self.follow_ups) >= self.max_follow_ups:
            oldest = self.follow_ups.popleft()
            logger.error(
                "%s: more than %d messages to send again: %s will not get the oldest, %s",
                self.name,
                self.max_follow_ups,
                addresses(oldest.recipients),
                message_id(oldest.msg),
            )
            self._lost += self._lose(oldest)
        self.follow_ups.append(follow_up)

    def _again(self, f: FollowUp, recipients: list[str], why: str, now: float) -> int:
        """`recipients` of `f` were refused for now again: tried later, or, its tries spent, given up (an
        error). Returns the alerts to count `failed`."""
        f.recipients = recipients
        if f.tries >= self.follow_up_tries:
            self.follow_ups.remove(f)
            logger.error(
                "%s: %d recipient(s) will not get message %s, still refused after %d tries: %s (%s)",
                self.name,
                len(recipients),
                message_id(f.msg),
                f.tries,
                addresses(recipients),
                why,
            )
            return self._lose(f)
        wait = min(self.follow_up_max_s, self.follow_up_first_s * 2.0 ** min(f.tries, 60))
        f.not_before = now + wait
        logger.warning(
            "%s: message %s not yet delivered to %s on its try %d (%s); trying again in %.0fs",
            self.name,
            message_id(f.msg),
            addresses(recipients),
            f.tries,
            why,
            wait,
        )
        return 0

    def _any_due(self, now: float) -> bool:
        return any(f.not_before is not None and f.not_before <= now for f in self.follow_ups)

    @staticmethod
    def _lose(f: FollowUp) -> int:
        """The alerts to count `failed` for `f`: its own, once."""
        if f.counted:
            return 0
        f.counted = True
        return f.alerts

    def _deliver(
        self, msg: EmailMessage, to_addrs: list[str] | None, *, all_refused: bool = False
    ) -> dict[str, tuple[int, bytes]]:
        """One attempt, to `to_addrs` (all the To: header's when None): the recipients refused while
        others took the message; with `all_refused`, every recipient refused is returned too, rather
        than raised (but a 421, the server closing: transient, for them all)."""
        smtp = self._smtp()
        with Cutoff(smtp, self.timeout_s) as cutoff:
            try:
                return self._transmit(smtp, msg, to_addrs)
            except smtplib.SMTPRecipientsRefused as exc:
                answers = dict(exc.recipients)
                # every one of them refused; not a 421, after which smtplib hangs up without asking for
                # the rest, nor sending the message to those that took it
                every = to_addrs is not None and set(to_addrs) <= set(answers)
                if all_refused and every and all(code != 421 for code, _ in answers.values()):
                    return answers
                raise smtp_error(exc) from None
            except (smtplib.SMTPException, OSError) as exc:
                if cutoff.fired:
                    raise TransientNotifyError(
                        f"SMTP timeout: not complete after {self.timeout_s:g}s"
                    ) from None
                raise smtp_error(exc) from None
            finally:
                smtp.close()

    def _transmit(
        self, smtp: smtplib.SMTP, msg: EmailMessage, to_addrs: list[str] | None
    ) -> dict[str, tuple[int, bytes]]:
        """Connect, log in, send; the recipients refused while others took the message. No `with smtp`:
        its exit raised on a QUIT answered other than 221, after the message was accepted, and the
        message, counted failed, was sent again at every retry."""
        smtp.connect(self.host, self.port)
        if self.security == "starttls":
            smtp.starttls(context=ssl.create_default_context())
        if self.username:
            smtp.login(self.username, self.password or "")
        refused = smtp.send_message(msg, to_addrs=to_addrs)
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


def partial_delivery(refused: dict[str, tuple[int, bytes]], *, retrying: bool) -> PartialDelivery:
    """What the server said of each recipient it refused, codes and addresses (not secrets) named."""
    temporary = all(400 <= code < 500 for code, _ in refused.values())
    what = " for now (4xx)" if temporary else ""
    if retrying and temporary:
        how = "; sent to them again later, to them alone (the others have it)"
    elif retrying:
        how = "; those refused for now (4xx) get it again later, alone (the others have it)"
    else:
        how = ", not sent again (the others have it)"
    text = f"SMTP refused {len(refused)} recipient(s){what}{how}: {refusals(refused)}"
    return PartialDelivery(one_line(text, 1000), temporary=temporary, retrying=retrying)


def refusals(refused: dict[str, tuple[int, bytes]]) -> str:
    """Each refused address with the server's code and words: `b@x: 450 4.2.0 busy; c@x: 550 ...`."""
    return "; ".join(
        f"{one_line(address, 200)}: {code}{smtp_words(text)}" for address, (code, text) in refused.items()
    )


def addresses(recipients: Sequence[str] | dict[str, tuple[int, bytes]]) -> str:
    """Recipients' addresses for the log, on one line."""
    return one_line(", ".join(recipients), 1000)


def message_id(msg: EmailMessage) -> str:
    return one_line(str(msg["Message-ID"] or "?"), 200)


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
