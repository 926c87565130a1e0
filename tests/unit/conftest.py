"""The unit tests' one fixture of Label Studio: the in-memory server of tests/fakes.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import respx

from tests.fakes import FakeLabelStudio


@pytest.fixture
def fake() -> Iterator[FakeLabelStudio]:
    """The in-memory Label Studio at ``tests.fakes.URL``, mounted with respx for the test."""
    with respx.mock(assert_all_called=False) as router:
        yield FakeLabelStudio().mount(router)
