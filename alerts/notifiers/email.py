"""SMTP e-mail: a plain-text part and an HTML part in which all message text is escaped."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from alerts.model import Alert
from alerts.notifiers.base import PermanentNotifyError, TransientNotifyError
from alerts.notifiers.render import digest_title, email_html, one_line, plain_lines


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

    def message(self, alerts: Sequence[Alert], now: float) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = one_line(f"{self.subject_prefix} {digest_title(alerts)}", 200)
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Date"] = formatdate(now, usegmt=True)
        msg["Message-ID"] = make_msgid(domain="finsent")
        text = "\n\n".join("\n".join(plain_lines(a, self.max_examples)) for a in alerts)
        msg.set_content(text)
        msg.add_alternative(email_html(alerts, self.max_examples), subtype="html")
        return msg

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        msg = self.message(alerts, now)
        try:
            smtp: smtplib.SMTP
            if self.security == "ssl":
                smtp = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout_s, context=ssl.create_default_context()
                )
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            with smtp:
                if self.security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(msg)
        except (
            smtplib.SMTPAuthenticationError,
            smtplib.SMTPRecipientsRefused,
            smtplib.SMTPSenderRefused,
        ) as exc:
            raise PermanentNotifyError(f"SMTP refused: {type(exc).__name__}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientNotifyError(f"SMTP failed: {type(exc).__name__}: {exc}") from None
