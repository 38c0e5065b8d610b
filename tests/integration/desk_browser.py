"""The desk in a real browser: Playwright driving Debian's chromium (no browser download; as
root it needs --no-sandbox), one browser context per person, so each has a session of their
own, and screenshots of the pages they see."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.integration.client import Service
from tests.integration.desk import password

TIMEOUT_MS = 120_000  # a busy machine: a page behind a restore job may take its time


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is missing: make setup installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def person(browser: Browser, service: Service, name: str) -> Page:
    """`name` logged in on the desk, in a browser context (cookies) of their own."""
    context = browser.new_context(
        base_url=f"http://{service.listen}", viewport={"width": 1100, "height": 900}, locale="id-ID"
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto("/desk/login")
    page.fill("#name", name)
    page.fill("#password", password(name))
    page.click("#login")
    page.wait_for_url("**/desk/requests")
    return page


def step(page: Page, action: str, recorded: str) -> None:
    """Submit the step's form on the request's page; the page then says it is recorded."""
    page.click(f"#act-{action} button")
    page.wait_for_url(f"**/desk/requests/*?done={recorded}")
    assert page.get_attribute("#status", "data-status") == recorded, page.content()


def follow_job(page: Page, *, deadline: float) -> list[str]:
    """Watch the job's page reload itself until the job ends; the statuses seen."""
    seen: list[str] = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(PlaywrightError):  # the page was reloading as we looked
            status = page.get_attribute("#job-status", "data-status", timeout=10_000)
            if status and (not seen or seen[-1] != status):
                seen.append(status)
            if status and status != "running":
                return seen
            assert page.locator('meta[http-equiv="refresh"]').count() == 1, "a running job's page follows it"
        time.sleep(1)
    raise AssertionError(f"the job did not end within {deadline}s (statuses seen: {seen})")


class Screenshots:
    """Numbered screenshots of whole pages, in `folder` (emptied first)."""

    def __init__(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.folder, self.taken = folder, []

    def take(self, page: Page, name: str) -> Path:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 5_000, f"{path}: an empty page"
        self.taken.append(path)
        return path
