"""Secrets never reach an output: URL passwords and tokens masked where they are recorded, and scrubbed from text.

Two layers. `mask_url` renders a URL-valued flag or environment value (--storage, --url, --docker-host,
DOCKER_HOST) with its password and token query values replaced by ***; that is what summaries, reports and
messages record. `redact` scrubs any secret seen by `mask_url` in this process (and any `user:password@` in a URL)
from free text such as a database driver's error message, before it is printed or written.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse

MASK = "***"
# Query parameters whose values are credentials (tokens in Docker/HTTP URLs, passwords in database URLs).
SECRET_QUERY_KEYS = re.compile(r"pass|pwd|secret|token|key|auth|credential|signature|sig$", re.IGNORECASE)
# Database URLs (dialect before any +driver) are read as SQLAlchemy reads them: a password may hold a raw / # ?.
RDB_DIALECTS = frozenset({"sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql", "cockroachdb"})
# scheme://user:password@host: the password part of any URL in free text (/ # ? allowed, as SQLAlchemy allows them).
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<password>[^@\s]+)(?P<at>@)")
# The password exactly as written in a database URL (SQLAlchemy's own pattern: up to the first @ after user:).
_RDB_RAW_PASSWORD = re.compile(r"[\w+]+://[^:/]*:(?P<password>[^@]*)@")
# key=value in a query string, value up to the next & or #.
_QUERY_PAIR = re.compile(r"(?P<key>[^&=#]+)=(?P<value>[^&#]*)")
# Secrets shorter than this are masked where recorded but not scrubbed from free text (too many false hits).
MIN_SCRUB_LEN = 4

_lock = threading.Lock()
_secrets: set[str] = set()


def mask_url(url: str | None) -> str | None:
    """The URL with its password and secret query values replaced by ***; the secrets are remembered for redact()."""
    if url is None:
        return None
    text = str(url)
    scheme, separator, _ = text.partition("://")
    if not separator:
        return text
    if scheme.partition("+")[0].lower() in RDB_DIALECTS:
        masked = _mask_database_url(text)
        if masked is not None:
            return masked
    return _mask_other_url(text)


def _mask_database_url(text: str) -> str | None:
    """A database URL as SQLAlchemy parses it, password and secret query values masked; None where it cannot parse it
    or an @ follows the password's (a raw @ in the password, perhaps: masked up to the last @ instead)."""
    from sqlalchemy.engine import make_url  # here, not at import: sqlalchemy imports subprocess, results.py is pure

    try:
        parsed = make_url(text)
    except Exception:  # any parse failure (ArgumentError, a bad port): the plain rule below
        return None
    raw = _RDB_RAW_PASSWORD.match(text)
    if parsed.password is not None:
        remember(str(parsed.password))
        if raw:
            remember(raw["password"])
            if "@" in text[raw.end():]:
                return None
    pairs = [(key, value) for key, values in parsed.query.items()
             for value in (values if isinstance(values, tuple) else (values,))]
    secret_pairs = [(key, value) for key, value in pairs if value and SECRET_QUERY_KEYS.search(key)]
    if parsed.password is None and not secret_pairs:
        return text
    for _, value in secret_pairs:
        remember(value)
    rendered = parsed.set(query={}).render_as_string(hide_password=True)
    query = [(key, MASK if (key, value) in secret_pairs else value) for key, value in pairs]
    return rendered + (f"?{urllib.parse.urlencode(query, safe='*')}" if query else "")


def _mask_other_url(text: str) -> str:
    """Any other URL: everything between user: and the last @ masked, then the secret query values."""
    scheme, _, rest = text.partition("://")
    userinfo, at, after = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if at and colon and password:
        remember(password)
        remember(urllib.parse.unquote(password))
        rest = f"{user}:{MASK}@{after}"
        after_at = len(rest) - len(after)
    else:
        after_at = 0
    head, question, query_and_fragment = rest[after_at:].partition("?")
    if question:
        query, hash_mark, fragment = query_and_fragment.partition("#")
        query = _QUERY_PAIR.sub(_mask_query_pair, query)
        rest = rest[:after_at] + head + "?" + query + hash_mark + fragment
    return f"{scheme}://{rest}"


def _mask_query_pair(match: re.Match[str]) -> str:
    value = match["value"]
    if not value or not SECRET_QUERY_KEYS.search(urllib.parse.unquote_plus(match["key"])):
        return match[0]
    remember(value)
    remember(urllib.parse.unquote_plus(value))
    return f"{match['key']}={MASK}"


def remember(secret: str) -> None:
    """Scrub this value (and its JSON- and URL-escaped forms) from every text redact() sees from now on."""
    if not secret:
        return
    with _lock:
        for form in (secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe="")):
            _secrets.add(form)


def redact(text: str) -> str:
    """Text with every remembered secret and every URL password replaced by ***."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: m["head"] + MASK + m["at"], text)
    with _lock:
        secrets = sorted((s for s in _secrets if len(s) >= MIN_SCRUB_LEN), key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def forget_all() -> None:
    """Drop remembered secrets (tests)."""
    with _lock:
        _secrets.clear()
