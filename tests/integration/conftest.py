"""Fixtures the chaos tests share (test_chaos_faults, test_chaos_kill, test_concurrency, test_secrets)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaoslib import Server, Zygote


@pytest.fixture(scope="module")
def server(label_studio) -> Iterator[Server]:
    """The session's Label Studio, driven directly (not through the fault proxy), for one module."""
    s = Server(label_studio)
    yield s
    s.close()


@pytest.fixture(scope="module")
def zygote(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    """The forking CLI runner of one test module, in a temp dir named after it."""
    z = Zygote(tmp_path_factory.mktemp(f"{request.module.__name__.rsplit('.', 1)[-1]}-cli"))
    yield z
    z.close()
