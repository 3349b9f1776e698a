"""An item's link without what the source sent to get it (pure).

Some paid feeds write the request's query into every item's absolute link
(`https://news.example.com/a/1?apikey=<the key>`), or the feed URL's `user:password@`: the link is then
published to Kafka, indexed in Elasticsearch and shown in notifications. `LinkCleaner` removes from a link
every query parameter whose value is one the source sends (its URL's query, its `params`, its header
values; under a name that does not look like a secret, from MIN_PLAIN_VALUE_CHARS characters) and user
info equal to the feed URL's (or holding a password it sends), and keeps the rest of the link as it was."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import unquote, unquote_plus, urlsplit

from ingest.secret_names import filter_query, is_secret_name

# A value the source sends under a name that does not look like a secret (ingest.secret_names): `q:
# earnings`, `lang: en`, `page: 1`, `Accept: ...`, is taken for one from this length. A link's `?id=1`
# must not lose its id because the source sends `page=1`: two items would share a link, and an id when
# the feed has no GUID.
MIN_PLAIN_VALUE_CHARS = 8


class LinkCleaner:
    """Cleans the links of one source's items. Its repr names no secret."""

    def __init__(self, secrets: Iterable[str], userinfo: str | None) -> None:
        found = {s for s in secrets if s}
        self._secrets = frozenset(found | {s.replace("+", " ") for s in found})  # `+` read as a space
        self._userinfo = unquote(userinfo) if userinfo else None

    def __repr__(self) -> str:
        return f"LinkCleaner({len(self._secrets)} values)"

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
    for name, value in headers.items():
        value = value.strip()
        credential = value.rpartition(" ")[2]  # `Bearer <token>`: the token alone
        for candidate in {value, credential}:
            if candidate and (is_secret_name(name) or len(candidate) >= MIN_PLAIN_VALUE_CHARS):
                secrets.add(candidate)
    userinfo = None
    if parts is not None and "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        password = unquote(userinfo.partition(":")[2])
        if password:
            secrets.add(password)
    return LinkCleaner(secrets, userinfo)
