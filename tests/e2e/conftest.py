"""The dashboard's browser: Debian's chromium, headless, driven by Playwright (its own browser downloads are not to
be had here), with nothing phoning home."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright, expect

from tests.tools import CHROMIUM, CHROMIUM_TOOL, need

# Playwright's own browser downloads are not to be had here: Debian's chromium, headless, nothing phoning home.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    need(CHROMIUM_TOOL)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        expect.set_options(timeout=15_000)  # two cores shared with the database, the broker and other suites
        yield launched
        await launched.close()
