"""Chromium for the browser tests: found, or installed by the project's own script.

No test here skips for want of a browser: if scripts/setup-test-deps.sh cannot install
one, the tests fail and say why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spacesim.load import browser

SETUP = browser.SETUP


def ensure_chromium(setup: Path = SETUP) -> str:
    """A Chromium executable (`spacesim.load.browser.ensure_chromium`, the one the swarm's
    browser probes use: the setup script runs once if there is none); no Chromium even
    then fails the test, never skips it."""
    try:
        return browser.ensure_chromium(setup)
    except browser.BrowserUnavailable as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def chromium() -> str:
    return ensure_chromium()
