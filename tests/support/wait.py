"""Waiting for a condition in tests: poll with a generous timeout, never assert a duration."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

WAIT = 30.0


def eventually(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` until it is truthy; fail the test naming ``what`` if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    pytest.fail(f"gave up waiting for {what}")
