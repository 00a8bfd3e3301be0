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
# scheme://user:password@host: the password part of any URL in free text.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<password>[^@\s/]+)(?P<at>@)")
# Secrets shorter than this are masked where recorded but not scrubbed from free text (too many false hits).
MIN_SCRUB_LEN = 4

_lock = threading.Lock()
_secrets: set[str] = set()


def mask_url(url: str | None) -> str | None:
    """The URL with its password and secret query values replaced by ***; the secrets are remembered for redact()."""
    if url is None:
        return None
    text = str(url)
    if "://" not in text:
        return text
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        return _USERINFO.sub(lambda m: m["head"] + MASK + m["at"], text)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if colon and password:
            remember(password)
            remember(urllib.parse.unquote(password))
            netloc = f"{user}:{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        masked = []
        for key, value in pairs:
            if value and SECRET_QUERY_KEYS.search(key):
                remember(value)
                masked.append((key, MASK))
            else:
                masked.append((key, value))
        query = urllib.parse.urlencode(masked, safe="*")
    if netloc == parts.netloc and query == parts.query:
        return text
    return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))


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
