"""``server.auth``: the token that ``GET /``, ``/health`` and ``/metrics`` need when it is set.

A client sends it as ``Authorization: Bearer <token>`` (Prometheus' ``authorization:`` scrape
setting, curl ``-H``); a browser, which cannot add that header, as the password of Basic auth
(any user name), so the status page opens after the browser's own login prompt. Both compared in
constant time. Webhooks keep their header secret and the ML-backend routes their path secret:
Label Studio can send neither this header nor Basic credentials.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ls_space_sync.logs import register_secret

log = logging.getLogger(__name__)

REALM = "ls-space-sync"


class Unauthorized(Exception):
    """A request to a guarded endpoint without the right token (answered 401)."""


def presented_token(authorization: str | None) -> str | None:
    """The token an ``Authorization`` header carries: a Bearer token, or a Basic password; else ``None``."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        user, colon, password = decoded.partition(":")
        return password if colon else None
    return None


def token_guard(app: FastAPI, token: str | None) -> Callable[[Request], None]:
    """A FastAPI dependency that refuses requests without ``token`` (a no-op when it is ``None``).

    Registers the token with the log masking and a handler that answers :class:`Unauthorized`
    with 401 and the ``WWW-Authenticate`` challenges (Bearer, and Basic for browsers).
    """
    if token:
        register_secret(token)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        log.info("request refused: 401 %s %s (no or wrong server.auth token)", request.method, request.url.path)
        response = JSONResponse({"detail": "missing or wrong token: send Authorization: Bearer <server.auth>"},
                                status_code=401)
        response.headers.append("WWW-Authenticate", f'Bearer realm="{REALM}"')
        response.headers.append("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
        return response

    def guard(request: Request) -> None:
        if token is None:
            return
        given = presented_token(request.headers.get("authorization"))
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized()

    return guard
