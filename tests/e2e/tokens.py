"""Giving the dashboard a token, as a user pastes one."""

from __future__ import annotations

from playwright.async_api import Page, expect


async def paste(page: Page, value: str, *, accepted: bool = True) -> None:
    """Opens the token dialog if it is closed, pastes `value` and uses it; when it is to be `accepted`, returns once
    the dialog closed (a refused token keeps it open, saying why)."""
    dialog = page.get_by_role("dialog", name="API token")
    if not await dialog.is_visible():
        await page.get_by_role("button", name="API token…").click()
    await page.get_by_label("Token", exact=True).fill(value)
    await page.get_by_role("button", name="Use this token").click()
    if accepted:
        await expect(dialog).to_be_hidden()
