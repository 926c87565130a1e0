"""How the client authenticates (label-studio-sdk 2.x semantics), faked at the HTTP level (respx).

A legacy token is sent as ``Authorization: Token <key>`` on plain httpx requests; a personal
access token (a JWT refresh token) is exchanged at ``POST /api/token/refresh/`` by the SDK's own
client and its access token sent as ``Authorization: Bearer <access>``.
"""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
import respx

from ls_space_sync.labelstudio.client import LabelStudioClient, _looks_like_jwt

URL = "http://ls.test"
PROJECT = {"id": 1, "title": "p", "task_number": 0, "label_config": "<View/>"}


def token(kind: str) -> str:
    return jwt.encode({"token_type": kind, "exp": int(time.time()) + 3600, "user_id": 1}, "a-test-signing-key-of-32-bytes!!", algorithm="HS256")


def test_legacy_token_is_one_header():
    seen = []
    with respx.mock(assert_all_called=True) as router:
        router.get(f"{URL}/api/projects/1/").mock(
            side_effect=lambda r: seen.append(r.headers["authorization"]) or httpx.Response(200, json=PROJECT))
        client = LabelStudioClient(URL, "legacy-token-123", retries=0)
        try:
            assert client.project(1).task_number == 0
        finally:
            client.close()
    assert seen == ["Token legacy-token-123"] and client.requests == 1
    assert client._sdk is None  # the SDK was never built for a read


# label-studio-sdk 2.x's TokensClientExt.refresh parses the answer with pydantic's deprecated parse_obj.
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
def test_personal_access_token_is_exchanged_for_an_access_token():
    refresh, access = token("refresh"), token("access")
    assert _looks_like_jwt(refresh) and not _looks_like_jwt("legacy-token-123") and not _looks_like_jwt("a.b.c")
    seen = []
    with respx.mock(assert_all_called=True) as router:
        router.post(f"{URL}/api/token/refresh/").mock(return_value=httpx.Response(200, json={"access": access}))
        router.get(f"{URL}/api/projects/1/").mock(
            side_effect=lambda r: seen.append(r.headers["authorization"]) or httpx.Response(200, json=PROJECT))
        client = LabelStudioClient(URL, refresh, retries=0)
        try:
            client.project(1)
            client.project(1)
        finally:
            client.close()
    assert seen == [f"Bearer {access}"] * 2  # refreshed once, then reused
