"""Who may act through the dashboard: the access token and same-origin rules.

Actions (cancel, retry, send) are allowed only when the dashboard was started
with an access token (``--token`` or ``$WERKFLUSS_DASHBOARD_TOKEN``) and the
request carries it — in the ``X-Werkfluss-Token`` header (what the page's
JavaScript sends) or an ``access_token`` form field. Without a configured
token the dashboard is read-only: it shows no action buttons and refuses
every action with 403.

Cross-site request forgery is refused twice over: another site's page cannot
know the token, and a request whose ``Origin`` names another host (or whose
``Sec-Fetch-Site`` says ``cross-site``) is refused before the token is
looked at.

    guard = Guard(token="kVtq…")
    refusal = guard.check(headers, host="127.0.0.1:8080", given="kVtq…")   # None: allowed
"""

from __future__ import annotations

import hmac
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from werkfluss.errors import InvalidArgument

ENV_TOKEN = "WERKFLUSS_DASHBOARD_TOKEN"
HEADER = "x-werkfluss-token"
FORM_FIELD = "access_token"
MIN_TOKEN_LENGTH = 16


def check_token(token: str | None) -> str | None:
    """The configured token (``None``: read-only); refuses one too short to be a secret.

    >>> check_token(None) is None
    True
    >>> check_token("short")
    Traceback (most recent call last):
    ...
    werkfluss.errors.InvalidArgument: the dashboard's access token must be at least 16 characters long ...
    """
    if token is None or token == "":
        return None
    if len(token) < MIN_TOKEN_LENGTH or not token.strip():
        raise InvalidArgument(
            f"the dashboard's access token must be at least {MIN_TOKEN_LENGTH} characters long "
            f"(got {len(token)}); make one with: python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):
        raise InvalidArgument(
            "the dashboard's access token may contain only printable ASCII characters without spaces "
            "(it travels in an HTTP header); secrets.token_urlsafe() makes a good one"
        )
    return token


def token_from(option: str | None) -> str | None:
    """``--token`` if given, else ``$WERKFLUSS_DASHBOARD_TOKEN``, checked."""
    return check_token(option if option else os.environ.get(ENV_TOKEN) or None)


@dataclass(frozen=True)
class Refusal:
    """Why an action was refused (always HTTP 403)."""

    reason: str  # "read_only" | "cross_origin" | "bad_token"
    message: str


READ_ONLY = Refusal(
    "read_only",
    "this dashboard is read-only: start it with --token or $WERKFLUSS_DASHBOARD_TOKEN to allow actions",
)
CROSS_ORIGIN = Refusal("cross_origin", "refused: the request comes from another site")
BAD_TOKEN = Refusal(
    "bad_token",
    "refused: the access token is missing or wrong; enter the dashboard's token at the top of the page",
)


class Guard:
    """Decides whether a request may act."""

    def __init__(self, token: str | None) -> None:
        self._token = check_token(token)

    @property
    def read_only(self) -> bool:
        return self._token is None

    def check(self, headers: Mapping[str, str], *, host: str | None, given: str | None) -> Refusal | None:
        """``None`` if the request may act, else why not.

        ``headers`` are the request's (lower-case names), ``host`` its ``Host``
        header, ``given`` the token from the form (the header wins).
        """
        if self._token is None:
            return READ_ONLY
        if not same_origin(headers, host):
            return CROSS_ORIGIN
        candidate = headers.get(HEADER) or given or ""
        if not hmac.compare_digest(candidate.encode("utf-8", "replace"), self._token.encode()):
            return BAD_TOKEN
        return None


def same_origin(headers: Mapping[str, str], host: str | None) -> bool:
    """Whether a request comes from this dashboard's own pages (or from no page at all).

    Browsers send ``Sec-Fetch-Site`` and ``Origin`` with POSTs; a client that
    sends neither (curl, a script) is not a browser that could be tricked.

    >>> same_origin({"origin": "http://127.0.0.1:8080"}, "127.0.0.1:8080")
    True
    >>> same_origin({"origin": "https://evil.example"}, "127.0.0.1:8080")
    False
    """
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    if origin is None:
        return True
    netloc = urllib.parse.urlsplit(origin).netloc
    return bool(netloc) and host is not None and netloc.lower() == host.lower()
