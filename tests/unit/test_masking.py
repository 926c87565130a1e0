"""Secrets never reach an error, the state database or a log line, even where a server echoes
them in its error body (found by tests/integration/test_chaos_*.py; issue 10 #7)."""

from __future__ import annotations

import logging

import httpx
import pytest
import respx

from ls_space_sync.errors import LsSpaceSyncError, mask, register_secret
from ls_space_sync.labelstudio.client import LabelStudioClient, LabelStudioError
from tests.fakes import KEY, URL
from tests.unit.test_sync import make_syncer

SECRET = "sekret-token-for-masking-0123"


def test_an_error_masks_a_registered_secret_made_before_or_after_registering():
    early = LsSpaceSyncError(f"the server said: bad token {SECRET}")
    register_secret(SECRET)
    late = LsSpaceSyncError(f"the server said: bad token {SECRET}")
    assert SECRET not in str(early) and SECRET not in str(late) and "***" in str(late)
    assert mask(f"x{SECRET}y") == "x***y"


def test_an_error_body_that_echoes_the_token_is_masked_everywhere(tmp_path, caplog):
    syncer = make_syncer(tmp_path)
    echo = {"detail": f"refused: Authorization: Token {KEY}"}
    with respx.mock(assert_all_called=False) as router:
        router.get(url__startswith=URL).mock(return_value=httpx.Response(400, json=echo))
        with caplog.at_level(logging.DEBUG), pytest.raises(LabelStudioError) as err:
            syncer.run_once(1)
    assert KEY not in str(err.value) and "***" in str(err.value)
    run = syncer.state.runs(1)[0]
    assert run.error and KEY not in run.error
    assert all(KEY not in record.getMessage() for record in caplog.records)


def test_a_client_made_without_settings_registers_its_key():
    key = "client-only-key-4567"
    client = LabelStudioClient("http://ls.test", key, retries=0)
    client.close()
    assert mask(f"token {key}") == "token ***"
