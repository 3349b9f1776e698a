"""What every notification channel is, and the one exception tree they raise."""

from __future__ import annotations

import base64
import json
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable
from urllib.parse import unquote, urlsplit

import httpx

from alerts.model import Alert
from alerts.notifiers import deadline
from ingest.decode import BIDI_CONTROL_CHARS, CONTROL_CHARS
from ingest.sources.http import parse_retry_after  # the same rules as the sources' HTTP client

TRANSIENT_STATUS = frozenset({408, 429})
# One request of a channel that must carry every alert as data (webhook, Alertmanager) holds at most this
# many alerts and bytes; a larger batch goes out in several. Under nginx's default 1 MiB body limit: a
# refused body (413) is permanent and would drop every alert in it.
MAX_BATCH_ALERTS = 100
MAX_BODY_BYTES = 512 * 1024
MAX_READ_BYTES = 16 * 1024  # of an answer's body: only its start is logged
MAX_LOGGED_CHARS = 200
MIN_SECRET_CHARS = 8  # a part of the URL, or a token or password in a header, this long: never logged
# What acts on a terminal or on the order text is shown in rather than printing: the C0 and C1 controls
# (ESC starts an ANSI sequence, U+009B is CSI, a backspace erases) and the bidi embeddings, overrides and
# isolates. Text on one line (log lines, headers, annotations) shows U+FFFD in their place, so that a
# message's text cannot rewrite what `kubectl logs` shows, or show itself in another order than it reads.
UNPRINTED = re.compile(f"[{CONTROL_CHARS}{BIDI_CONTROL_CHARS}]")
# Cutting text short (`clean_cut`): what is shown as part of the code point before it, so never cut off it.
ZWJ = "\u200d"
JOINING = frozenset({ZWJ, "\ufe0e", "\ufe0f"})  # and the variation selectors (text or emoji style)
SKIN_TONES = ("\U0001f3fb", "\U0001f3ff")
TAGS = ("\U000e0020", "\U000e007f")  # subdivision flags (England: a black flag and tags)
REGIONAL_INDICATORS = ("\U0001f1e6", "\U0001f1ff")  # two make a flag
CUT_SPACE_WINDOW = 10  # a cut moves back to a space this close
CUT_MAX_BACKOFF = 32  # longer joined runs than this are not one character (stacked marks): cut as asked

T = TypeVar("T")


class NotifyError(Exception):
    """A notification could not be delivered."""


class TransientNotifyError(NotifyError):
    """Worth retrying: connection failure, timeout, 5xx, 408, 429. `retry_after_s` is the receiver's
    Retry-After, when it sent one."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentNotifyError(NotifyError):
    """Retrying will not help: bad URL, 3xx, 4xx, rejected recipient, bad credentials."""


class PartialDelivery(NotifyError):
    """Delivered to some of the channel's recipients and refused by the others (an SMTP server refusing
    recipients one by one). Never sent again as a whole: those that took the message would get it twice.
    `temporary` when every refusal was (4xx: a busy mailbox, greylisting). `retrying` when the notifier
    tries the same message again, later and to the recipients refused for now alone (see FollowUps):
    then, when `temporary` too, every recipient may still get it."""

    def __init__(
        self,
        message: str,
        *,
        temporary: bool,
        retrying: bool = False,
        counted: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.retrying = retrying
        # tells the retry that its alerts were counted `failed` already (stuck after max_retries before
        # this delivery), so that giving up later does not count them twice
        self.counted = counted

    @property
    def lost(self) -> bool:
        """Whether some recipient will not get the message: refused for good, or for now and not retried."""
        return not (self.temporary and self.retrying)


class UnrenderableAlert(PermanentNotifyError):
    """One alert of a batch cannot be rendered (a lone surrogate in its text, a time out of range). Raised
    before anything is sent, so that this alert alone fails for good and the others go out without it."""

    def __init__(self, alert: Alert, reason: str) -> None:
        super().__init__(f"alert cannot be rendered: {reason}")
        self.alert = alert


class Notifier(Protocol):
    """One channel. `send` delivers all `alerts` as one message (a digest when there are several);
    `batch_size` says how many of a queue's first alerts one message may carry (at least 1). What some
    channels offer besides, the dispatcher tells by their type: Closable, WaitCapped, FollowUps."""

    name: str

    def batch_size(self, alerts: Sequence[Alert]) -> int: ...

    def send(self, alerts: Sequence[Alert], now: float) -> None: ...


@runtime_checkable
class Closable(Protocol):
    """A notifier holding connections (the HTTP ones' client): the dispatcher closes it when it is closed."""

    def close(self) -> None: ...


@runtime_checkable
class WaitCapped(Protocol):
    """A notifier whose channel must never wait longer than `max_wait_s` after a failure, whatever the
    backoff or the receiver's Retry-After say (Alertmanager's: within the firing alerts' TTL)."""

    @property
    def max_wait_s(self) -> float: ...


@dataclass(frozen=True)
class FollowUpResult:
    """What one `FollowUps.follow_up` did. `failed`: alerts to count `failed` now, once each (a message
    some recipient will finally not get: refused for good, out of tries, or dropped for the bound).
    `go_on`: whether another follow-up is due and may be tried now (False when none is, or when the
    server could not be reached: the others would fail the same way)."""

    failed: int = 0
    go_on: bool = False


@runtime_checkable
class FollowUps(Protocol):
    """A notifier that finishes some deliveries itself, later (e-mail: recipients an SMTP server refused
    for now while it took the message for the others). Nothing here may block longer than one attempt's
    timeout: the dispatcher calls `follow_up` from its flush, once per due follow-up within its budget.
    `now` is the dispatcher's monotonic clock."""

    def follow_up(self, now: float) -> FollowUpResult: ...

    def follow_ups_pending(self) -> int: ...

    def abandon_follow_ups(self) -> int:
        """Give every pending follow-up up (the worker stops: they are not saved), logged as an error;
        returns how many alerts to count `failed`."""
        ...


def render_alert(alert: Alert, render: Callable[[Alert], T]) -> T:
    """`render(alert)`, checked to be text that can be sent (UTF-8: no lone surrogate). Any failure is
    this alert's alone: UnrenderableAlert, so one bad alert never takes a digest down with it."""
    try:
        rendered = render(alert)
        json.dumps(rendered, ensure_ascii=False).encode()  # walks every string the rendering holds
    except (ValueError, TypeError, OverflowError, OSError) as exc:
        raise UnrenderableAlert(alert, type(exc).__name__) from None
    return rendered


def fitting(sizes: Iterable[int], max_bytes: int, max_items: int = MAX_BATCH_ALERTS) -> int:
    """How many items, from the first, fit in `max_bytes` and `max_items`: at least 1, so that an item
    too large on its own is still tried (and fails alone)."""
    count, total = 0, 0
    for size in sizes:
        if count >= max_items or (count and total + size > max_bytes):
            break
        count, total = count + 1, total + size
    return max(count, 1)


def json_size(render: Callable[[], object]) -> int:
    """Bytes what `render` returns takes as an item of a JSON list; 0 when it cannot be rendered (`send`
    then names the alert that fails)."""
    try:
        return len(json.dumps(render())) + 2  # and the ", " before the next item
    except (ValueError, TypeError, OverflowError, OSError):
        return 0


def redirect_host(response: httpx.Response) -> str:
    """Only the host a redirect points to: the full Location may carry the webhook's token."""
    try:
        return urlsplit(response.headers.get("Location", "")).hostname or "?"
    except ValueError:
        return "?"


def post_json(
    client: httpx.Client,
    url: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    now: float | None = None,
) -> None:
    """POST a JSON body; anything but 2xx raises from the NotifyError tree (the URL is never logged).
    A redirect is not followed (it would re-send the body, maybe a secret, elsewhere) and is permanent, and
    so is a URL httpx cannot use, or a header it refuses to send: retrying cannot help, and the message
    would quote the URL or the header. The whole request, answer included, ends by the client's timeout
    (see `deadline`): a receiver dripping its answer must not hold the worker's thread for longer.
    Every value of `headers` is taken for a credential (an Authorization, a signature): an error answer
    that echoes it is logged without it, as without the URL."""
    ends = deadline.request_deadline(client)
    try:
        with (
            deadline.within(ends),
            client.stream(
                "POST", url, content=body, headers={"Content-Type": "application/json", **(headers or {})}
            ) as response,
        ):
            status, text = response.status_code, read_text(response, ends)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise PermanentNotifyError(f"bad URL: {type(exc).__name__}") from None
    except (httpx.LocalProtocolError, UnicodeEncodeError) as exc:  # e.g. a newline in a header
        raise PermanentNotifyError(f"request refused before sending: {type(exc).__name__}") from None
    except httpx.TimeoutException as exc:
        raise TransientNotifyError(f"timeout: {timeout_text(exc, client)}") from None
    except httpx.TransportError as exc:
        raise TransientNotifyError(f"connection failed: {type(exc).__name__}") from None
    except httpx.HTTPError as exc:
        raise PermanentNotifyError(f"request failed: {type(exc).__name__}") from None
    if 200 <= status < 300:
        return
    if 300 <= status < 400:
        raise PermanentNotifyError(
            f"HTTP {status}: redirected to host {redirect_host(response)}, not followed"
        )
    said = logged_text(redacted(text, url, (headers or {}).values()))
    if status in TRANSIENT_STATUS or status >= 500:
        at = time.time() if now is None else now
        retry_after = parse_retry_after(response.headers.get("Retry-After"), at)
        raise TransientNotifyError(f"HTTP {status}: {said}", retry_after)
    raise PermanentNotifyError(f"HTTP {status}: {said}")


def flat_text(text: str) -> str:
    """`text` on one line, whitespace runs made one space and the UNPRINTED characters U+FFFD: it can
    neither forge a line (of a log, of an e-mail's headers) nor drive the terminal that shows it."""
    return UNPRINTED.sub("\ufffd", " ".join(text.split()))


def one_line(text: str, limit: int = 280) -> str:
    """`flat_text`, shortened to at most `limit` characters: no forged lines or headers, no terminal
    escape sequences in the log, no text shown reordered, no character cut in half (`clean_cut`)."""
    flat = flat_text(text)
    if len(flat) <= limit:
        return flat
    return flat[: clean_cut(flat, limit - 1)] + "…" if limit > 0 else ""


def clean_cut(text: str, at: int) -> int:
    """Where to cut `text` at or before `at`, so that what is shown keeps whole characters as read: a
    cut by code points split flags ('🇺' of '🇺🇸'), ZWJ sequences ('👨\u200d' of a family), keycaps and
    accents. At a space among the last CUT_SPACE_WINDOW characters when there is one (a whole word);
    else backed off over joined code points, at most CUT_MAX_BACKOFF of them (beyond that the text is
    no real character: cut where asked)."""
    at = max(at, 0)
    space = text.rfind(" ", max(at - CUT_SPACE_WINDOW, 1), at + 1)
    if space > 0:
        return space
    cut = at
    while at - cut <= CUT_MAX_BACKOFF and splits(text, cut):
        cut -= 1
    return cut if at - cut <= CUT_MAX_BACKOFF else at


def splits(text: str, cut: int) -> bool:
    """Whether cutting `text` before index `cut` splits what reads as one character: the next code point
    joins the one before (combining or enclosing mark, ZWJ, variation selector, skin tone, tag), the
    one before is a ZWJ, or the cut falls inside a regional-indicator pair (a flag)."""
    if cut <= 0 or cut >= len(text):
        return False
    after, before = text[cut], text[cut - 1]
    if joins(after) or before == ZWJ:
        return True
    return regional(after) and regional(before) and regional_run(text, cut) % 2 == 1


def joins(char: str) -> bool:
    """A code point shown as part of the one before it."""
    if char in JOINING or unicodedata.combining(char) or unicodedata.category(char).startswith("M"):
        return True
    return SKIN_TONES[0] <= char <= SKIN_TONES[1] or TAGS[0] <= char <= TAGS[1]


def regional(char: str) -> bool:
    return REGIONAL_INDICATORS[0] <= char <= REGIONAL_INDICATORS[1]


def regional_run(text: str, end: int) -> int:
    """How many regional indicators come right before index `end` (they pair from the run's start)."""
    start = end
    while start > 0 and regional(text[start - 1]):
        start -= 1
    return end - start


def logged_text(text: str) -> str:
    """The start of a receiver's answer, on one line (a body cannot forge log lines nor send a terminal
    escape sequences)."""
    return one_line(text, MAX_LOGGED_CHARS)


def read_text(response: httpx.Response, ends: float | None) -> str:
    """The start of the answer's body, as text: at most MAX_READ_BYTES (only its start is logged), and
    what came by the request's deadline, whatever the transport. The status has come, and says how the
    request went: a 2xx whose body is cut short was still delivered (sent again, it would be sent twice)."""
    if response.is_stream_consumed:  # read when it was made (a MockTransport's answer)
        return decoded(response.content[:MAX_READ_BYTES], response)
    raw = bytearray()
    try:
        for chunk in response.iter_raw():
            raw += chunk
            if len(raw) >= MAX_READ_BYTES or deadline.passed(ends):
                break
    except httpx.HTTPError:  # the body cut short (or the deadline passed): keep its start
        pass
    return decoded(bytes(raw[:MAX_READ_BYTES]), response)


def decoded(raw: bytes, response: httpx.Response) -> str:
    """`raw` as text in the answer's charset; UTF-8 when it names none, or one Python does not know."""
    try:
        return raw.decode(response.charset_encoding or "utf-8", "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")


def timeout_text(exc: httpx.TimeoutException, client: httpx.Client) -> str:
    """Which timeout: the request's as a whole (each read came in time), or one operation's."""
    whole = deadline.request_timeout(client)
    if str(exc) == deadline.DEADLINE_PASSED and whole is not None:
        return f"not complete after {whole:g}s"
    return type(exc).__name__


def redacted(text: str, url: str, header_values: Iterable[str] = ()) -> str:
    """`text` without the request's URL, path, query or any long part of them, nor its credentials in
    `header_values`. Error pages echo the request (Spring Boot's JSON has "path", Express says "Cannot
    POST /path", a 401 may quote the Authorization it refused), and for a Slack-style webhook the path is
    the token."""
    secrets = url_secrets(url).union(*(header_secrets(v) for v in header_values))
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    return text


def header_secrets(value: str) -> set[str]:
    """What of a credential header's value must never be logged: the value, and when it has a scheme
    (`Bearer <token>`, `Basic <base64>`) the token; for Basic, the `user:password` it encodes and the
    password. A token or password shorter than MIN_SECRET_CHARS is cut out only within the value (alone,
    it could be any word of the answer)."""
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    found = {value, value.strip()}
    if token:
        found.add(f"{scheme} {token}")
        found |= {token} if len(token) >= MIN_SECRET_CHARS else set()
    if scheme.lower() == "basic" and token:
        found |= basic_secrets(token)
    found |= {p.replace("/", "\\/") for p in found}  # as JSON may quote it (base64 holds slashes)
    return {p for p in found if len(p) >= 2}


def basic_secrets(token: str) -> set[str]:
    """The `user:password` a Basic token encodes, and the password when long enough to be told apart."""
    try:
        pair = base64.b64decode(token, validate=True).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError: nothing more to cut out
        return set()
    password = pair.partition(":")[2]
    return {pair} | ({password} if len(password) >= MIN_SECRET_CHARS else set())


def url_secrets(url: str) -> set[str]:
    """What of `url` must never be logged, as sent and as a server may quote it (percent-decoded, or
    with slashes JSON-escaped): the URL, its path and query, and every path segment or query part of at
    least MIN_SECRET_CHARS."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return {url}
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    pieces = {url, target, parts.path, parts.query, parts.username or "", parts.password or ""}
    pieces |= {p for p in re.split(r"[/?&=;]", target) if len(p) >= MIN_SECRET_CHARS}
    found = {p for p in pieces if p} | {unquote(p) for p in pieces if p}
    found = {p for p in found | {p.replace("/", "\\/") for p in found} if len(p) >= 2}
    return found | userinfo_secrets(parts.username, parts.password)


def userinfo_secrets(username: str | None, password: str | None) -> set[str]:
    """What of a URL's `user:password@` must never be logged besides the user info as written: the
    `Authorization: Basic <token>` httpx makes of it (and sends unasked; a receiver answering 401 may
    echo it), and the password decoded (`p%40ss` is sent as `p@ss`)."""
    if username is None and password is None:
        return set()
    user, secret = unquote(username or ""), unquote(password or "")
    token = base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
    found = header_secrets(f"Basic {token}")
    if len(secret) >= 2:
        found |= {secret, secret.replace("/", "\\/")}
    return found
