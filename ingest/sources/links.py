"""An item's link without what the source sent to get it (pure).

Some paid feeds write the request's query into every item's absolute link
(`https://news.example.com/a/1?apikey=<the key>`), or the feed URL's `user:password@`: the link is then
published to Kafka, indexed in Elasticsearch and shown in notifications. `LinkCleaner` removes from a link
every query parameter whose value is one the source sends (its URL's query, its `params`, its header
values; under a name that does not look like a secret, from MIN_PLAIN_VALUE_CHARS characters) and user
info equal to the feed URL's (or holding a password it sends), and keeps the rest of the link as it was.

The same values come back elsewhere in an item: a GUID or Atom id that is the link, an API's id, a link
written as text in a title or body ("Full story: https://...?apikey=<the key>"). `LinkCleaner.mask`
replaces them there with MASK; it masks only the values that are secrets rather than search words, dates
or numbers (see `_maskable`), since `q: earnings` must not turn every "earnings" of a headline into MASK,
nor `from: 2026-01-01` every date."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit

from ingest.secret_names import filter_query, is_secret_name

# A value the source sends under a name that does not look like a secret (ingest.secret_names): `q:
# earnings`, `lang: en`, `page: 1`, `Accept: ...`, is taken for one from this length. A link's `?id=1`
# must not lose its id because the source sends `page=1`: two items would share a link, and an id when
# the feed has no GUID.
MIN_PLAIN_VALUE_CHARS = 8
# What a secret value is replaced with inside a text or an id.
MASK = "***"
# A value is masked inside texts and ids from this length: a short one (`token: abc`) is as likely to be
# an ordinary word or number of the text, and masking it would garble the text the model labels.
MIN_MASKED_CHARS = 8
# A value sent under a plain name (`q`, `symbols`, `from`, `cik`, `X-Client`) is masked in texts only when
# it reads like a credential (`_credential_like`): no whitespace, not words, numbers or a date, and this
# many characters (API keys are 20-64 random characters), or MIN_PLAIN_MIXED_CHARS mixing letters and
# digits with no separator of dates or numbers (`f3a9c1e7b2d4a6c8`, `secretkey12345+/`). `from:
# 2026-01-01` must not turn a headline's "Markets on 2026-01-01" into "Markets on ***", nor `cik:
# 0000320193` a filing's CIK.
MIN_PLAIN_MASKED_CHARS = 20
MIN_PLAIN_MIXED_CHARS = 16
# What separates the words and numbers of a plain value: `2026-01-01`, `1,234.5`, `AAPL,MSFT`, `BRK.B`,
# `09:30`, `01/15/2026`, `communication-services`, `dashboard_2026`.
_SEPARATORS = re.compile(r"[-_.,:;/|+']+")
_DATE_SEPARATORS = frozenset("-.,:")  # `/` too, but a key's base64 has it: `01/15/2026` is numbers
_CAMEL_CASE = re.compile(r"[A-Za-z][a-z]*(?:[A-Z][a-z]{2,})+")
# A date or time as APIs take it: `2026-01-01`, `2026-01-01T09:30:00Z`, `2026-01-01T09:30:00.000+00:00`,
# `20260101T093000Z`.
_DATETIME = re.compile(
    r"\d{4}-?\d{2}-?\d{2}(?:[T ]\d{2}(?::?\d{2}(?::?\d{2}(?:[.,]\d+)?)?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?",
    re.IGNORECASE,
)


class LinkCleaner:
    """Cleans the links of one source's items. Its repr names no secret."""

    def __init__(self, secrets: Iterable[str], userinfo: str | None, masked: Iterable[str] = ()) -> None:
        found = {s for s in secrets if s}
        self._secrets = frozenset(found | {s.replace("+", " ") for s in found})  # `+` read as a space
        self._userinfo = unquote(userinfo) if userinfo else None
        # as written, and as a link writes it (`/`, `+`, `=` of a base64 key percent-encoded)
        forms = {f for m in masked if m for f in (m, quote(m, safe=""), quote(m), quote_plus(m))}
        ordered = sorted(forms, key=lambda f: (-len(f), f))  # the longest first: `Bearer <t>` before `<t>`
        self._masked = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._masked_count = len(ordered)

    def __repr__(self) -> str:
        return f"LinkCleaner({len(self._secrets)} values, {self._masked_count} masked forms)"

    def mask(self, text: str) -> str:
        """`text` with every occurrence of a secret value the source sends (see `_maskable`) replaced by
        MASK; anything else unchanged. Deterministic, so an id masked so is the same at every fetch."""
        if self._masked is None or not text:
            return text
        return self._masked.sub(MASK, text)

    def __call__(self, link: str) -> str:
        """`link` without the query parameters whose value the source sends, nor the feed URL's user
        info (or any whose password it sends); anything else unchanged. A link that does not parse is
        returned as it is (it is refused as an invalid url later)."""
        if not self._secrets and self._userinfo is None:
            return link
        text = link.strip()
        try:
            parts = urlsplit(text)
        except ValueError:
            return link
        netloc = parts.netloc
        userinfo, at, hostport = netloc.rpartition("@")
        if at and self._secret_userinfo(userinfo):
            netloc = hostport
        query = filter_query(parts.query, lambda _name, value: value in self._secrets)
        if netloc == parts.netloc and query == parts.query:
            return link
        out = f"{parts.scheme}:" if parts.scheme else ""
        if parts.netloc:
            out += f"//{netloc}"
        out += parts.path
        if query:
            out += f"?{query}"
        if parts.fragment:
            out += f"#{parts.fragment}"
        return out

    def _secret_userinfo(self, userinfo: str) -> bool:
        decoded = unquote(userinfo)
        if self._userinfo is not None and decoded == self._userinfo:
            return True
        password = decoded.partition(":")[2]
        return bool(password) and password in self._secrets


def link_cleaner(url: str, params: Mapping[str, str], headers: Mapping[str, str]) -> LinkCleaner:
    """The cleaner of a source fetched from `url` with `params` and `headers` (values as sent)."""
    secrets: set[str] = set()
    masked: set[str] = set()
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        parts = None
    sent: list[tuple[str, str]] = list(params.items())
    if parts is not None:
        for piece in parts.query.split("&"):
            name, _, value = piece.partition("=")
            sent.append((unquote_plus(name), unquote_plus(value)))
    for name, value in sent:
        if value and (is_secret_name(name) or len(value) >= MIN_PLAIN_VALUE_CHARS):
            secrets.add(value)
            if _maskable(value, is_secret_name(name)):
                masked.add(value)
    for name, value in headers.items():
        value = value.strip()
        credential = value.rpartition(" ")[2]  # `Bearer <token>`: the token alone
        for candidate in {value, credential}:
            if candidate and (is_secret_name(name) or len(candidate) >= MIN_PLAIN_VALUE_CHARS):
                secrets.add(candidate)
                if _maskable(candidate, is_secret_name(name)):
                    masked.add(candidate)
    userinfo = None
    if parts is not None and "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        password = unquote(userinfo.partition(":")[2])
        if password:
            secrets.add(password)
            if _maskable(password, True):
                masked.add(password)
    return LinkCleaner(secrets, userinfo, masked)


def _maskable(value: str, secret_named: bool) -> bool:
    """Whether `value`, sent by a source, is masked inside texts and ids: from MIN_MASKED_CHARS
    characters, and under a plain name only when it reads like a credential (`_credential_like`)."""
    if len(value) < MIN_MASKED_CHARS:
        return False
    return secret_named or _credential_like(value)


def _credential_like(value: str) -> bool:
    """Whether a value sent under a plain name reads like a credential rather than what a text holds too:
    never with whitespace, never a date or time (`2026-01-01`, `2026-01-01T09:30:00Z`), never only
    numbers and words (`0000320193`, `1,234.5`, `AAPL,MSFT,GOOG`, `communication-services`,
    `dashboard-20260615`: no part mixing letters and digits, or lower and upper case past a capital);
    otherwise from MIN_PLAIN_MASKED_CHARS characters (`f3a9c1e7-...` a UUID, base64, a JWT), or from
    MIN_PLAIN_MIXED_CHARS mixing letters and digits without `-.:,` (`FY2025Q4-results` is no key)."""
    if any(c.isspace() for c in value) or _DATETIME.fullmatch(value):
        return False
    if all(_plain_part(part) for part in _SEPARATORS.split(value) if part):
        return False
    if len(value) >= MIN_PLAIN_MASKED_CHARS:
        return True
    return (
        len(value) >= MIN_PLAIN_MIXED_CHARS
        and any(c.isalpha() for c in value)
        and any(c.isdigit() for c in value)
        and not any(c in _DATE_SEPARATORS for c in value)
    )


def _plain_part(part: str) -> bool:
    """A number (`2026`, `0000320193`) or a word (`earnings`, `NASDAQ`, `Apple`, `Société`,
    `ConsumerDiscretionary`: each capital past the first followed by 2 or more small letters, as random
    letters seldom are)."""
    if part.isdecimal():
        return True
    if not part.isalpha():
        return False
    return part.islower() or part.isupper() or part.istitle() or _CAMEL_CASE.fullmatch(part) is not None
