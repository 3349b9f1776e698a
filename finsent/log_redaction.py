"""The configured secrets never reach the log, whatever logs them. At DEBUG kafka-python writes its whole
configuration (`sasl_plain_password`, `ssl_password`) and every SASL request's bytes on each connection,
and a client library's error may quote a URL with its password: a filter on the root logger's handlers
replaces each secret value with MASK in every record they write."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, SecretStr

from ingest.secret_names import is_secret_name

MASK = "**********"
MIN_SECRET_CHARS = 6
"""Shorter values are not masked: replacing every `demo` (a free API key) in the log would garble it."""


class SecretMask(logging.Filter):
    """Replaces the secret values it was given in each record's message (and its exception's text)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()

    def add(self, values: Iterable[str]) -> None:
        """Mask these too, and the forms a repr gives them (`\\` for a backslash, `\\xc3\\xa4` for an
        `ä` in the bytes of kafka-python's SASL request); longest first, so that a secret holding
        another is masked whole."""
        forms = {f for v in values for f in (v, repr(v)[1:-1], repr(v.encode())[2:-1])}
        found = {v for v in (*self.secrets, *forms) if len(v) >= MIN_SECRET_CHARS}
        self.secrets = tuple(sorted(found, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        """Always True: a record is masked, never dropped. A record whose arguments do not fit its format
        is left to the handler (which reports it), not raised here into the code that logged it."""
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
            masked = self._mask(message)
            if masked != message:
                record.msg, record.args = masked, None
            if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
                text = logging.Formatter().formatException(record.exc_info)
                record.exc_text = self._mask(text)  # what the formatter shows, formatted once
            if record.stack_info:
                record.stack_info = self._mask(record.stack_info)
        except Exception:
            return True
        return True

    def _mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def secret_values(model: BaseModel) -> Iterator[str]:
    """Every SecretStr value in `model` (nested models, lists, tuples and maps included; in a map, only
    those under a secret-looking name: `ingest.secret_names`), and the password of any URL given as
    plain text (`https://user:password@es:9200`), as given and percent-decoded."""
    yield from _values(model)


def _values(value: Any) -> Iterator[str]:
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        yield secret
        scheme, space, token = secret.partition(" ")
        if space and scheme.isalpha():  # `Bearer TOKEN`: the token alone may be quoted too
            yield token.strip()
        yield from _url_password(secret)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _values(getattr(value, name))
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, SecretStr) and isinstance(key, str) and not is_secret_name(key):
                # a source's headers and params are all SecretStr, `lang: en` and `User-Agent` too:
                # masking those would garble every line that names them
                yield from _url_password(item.get_secret_value())
            else:
                yield from _values(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _values(item)
    elif isinstance(value, str):
        yield from _url_password(value)


def _url_password(text: str) -> Iterator[str]:
    if "@" not in text or "://" not in text:
        return
    try:
        password = urlsplit(text.strip()).password
    except ValueError:
        return
    if password:
        yield password
        yield unquote(password)


def mask_secrets_in_log(model: BaseModel) -> None:
    """Install (once) the SecretMask on each handler of the root logger and add `model`'s secrets to it.
    Called when settings are read (`finsent.settings.load_settings`) and a sources file is loaded."""
    mask = installed_mask()
    mask.add(secret_values(model))


def installed_mask() -> SecretMask:
    """The SecretMask on the root logger's handlers, installed on any that lacks it."""
    root = logging.getLogger()
    found = next(
        (f for h in root.handlers for f in h.filters if isinstance(f, SecretMask)),
        None,
    )
    mask = found or SecretMask()
    for handler in root.handlers:
        if mask not in handler.filters:
            handler.addFilter(mask)
    return mask
