"""Which names look like they hold a secret (a query parameter, a header, a settings key), in one place:
the sources clean item links with it, notifications drop such query parameters from the links they show,
and configuration printouts can mask by it.

A name is secret-looking when, case-insensitively, it is one of SECRET_WORDS, or one of its parts is (the
parts split at anything but a letter or a digit and at camelCase humps: `auth_token`, `x-api-key`,
`apiKey`, `X-Session`), or it starts or ends with one of the longer words (`authtoken`, `sessionid`,
`mysecret`). The short words (`key`, `sig`, `pwd`, `pass`, `auth`, `jwt`) count as whole parts only:
`author`, `keyword` or `signal` are not secrets."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote_plus

SECRET_WORDS: tuple[str, ...] = (
    "token",
    "key",
    "apikey",
    "api_key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "pass",
    "signature",
    "sig",
    "auth",
    "authorization",
    "jwt",
    "access_token",
    "credential",
    "credentials",
    "session",
)
# For a regex that finds these words anywhere in a name (as `finsent check-config` masks a URL's query):
# longest first, so that an alternation prefers `access_token` to `token`.
SECRET_NAMES: str = "|".join(re.escape(w) for w in sorted(SECRET_WORDS, key=len, reverse=True))

_WORDS = frozenset(SECRET_WORDS)
# Long enough to be told apart inside a run of letters: `sessionid`, `authtoken` (not `author`).
_AFFIX_WORDS = tuple(w for w in SECRET_WORDS if len(w) >= 5 and "_" not in w)
_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATOR = re.compile(r"[^a-z0-9]+")


def is_secret_name(name: str) -> bool:
    """Whether `name` (a query parameter's, a header's) looks like it holds a secret (see the module)."""
    whole = name.strip().lower()
    if not whole:
        return False
    if whole in _WORDS or _SEPARATOR.sub("_", whole) in _WORDS:
        return True
    parts = [p for p in _SEPARATOR.split(_HUMP.sub("_", name.strip()).lower()) if p]
    if any(p in _WORDS or (p.endswith("s") and p[:-1] in _WORDS) for p in parts):
        return True
    return any(p.startswith(_AFFIX_WORDS) or p.endswith(_AFFIX_WORDS) for p in parts)


def filter_query(query: str, drop: Callable[[str, str], bool]) -> str:
    """`query` (the part after `?`, raw) without the parameters for which `drop(name, value)` is true,
    names and values percent-decoded for the test; the others are kept byte for byte, in their order."""
    if not query:
        return query
    kept = []
    for piece in query.split("&"):
        name, _, value = piece.partition("=")
        if piece and drop(unquote_plus(name), unquote_plus(value)):
            continue
        kept.append(piece)
    return "&".join(kept)


def drop_secret_params(query: str) -> str:
    """`query` without the parameters whose names look like secrets (`is_secret_name`)."""
    return filter_query(query, lambda name, _value: is_secret_name(name))
