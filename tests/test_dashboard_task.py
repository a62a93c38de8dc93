"""The dashboard's task view in headless Chromium: a running task's progress, and cancel from it and from a row."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, expect

from reliq.monitor import app as monitor
from reliq.queue import Queue
from reliq.settings import Settings
from tests.test_cancel_running import until_state, worker_running
from tests.test_dashboard import CHROMIUM, browser  # noqa: F401  (the fixture)
from tests.test_dashboard_tasks import TOKEN, confirm_with_token

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs the system Chromium")


async def test_the_task_view_shows_progress_moving_and_cancels_the_running_task(
    browser: Browser, queue: Queue, settings: Settings, tmp_path: Path  # noqa: F811
) -> None:
    settings = settings.replace(api_token=TOKEN)
    server = TestServer(monitor.create_app(queue, settings), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/"))
    page = await browser.new_page(viewport={"width": 1300, "height": 1200})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        async with worker_running(settings):
            task_id = await queue.enqueue("thread-poll", {"log": str(tmp_path / "runs")})
            async with aiohttp.ClientSession() as http:  # a cancel is a write: the token is needed
                async with http.post(f"{url}task/{task_id}/cancel") as resp:
                    assert resp.status == 401
                async with http.get(f"{url}task/NOPE") as resp:
                    assert resp.status == 404
            await page.goto(url)
            # A scheduled task is cancelled from its row in the tasks panel (asked first; the token on the 401).
            later = await queue.enqueue("noop", delay=600)
            await page.locator('#tasks-tabs button[data-view="scheduled"]').click()
            await page.locator(f'#tasks-table tr[data-id="{later}"] button[data-act="cancel"]').click()
            await confirm_with_token(page, first=True)
            await until_state(queue, later, "cancelled")
            # The running one opens from its row: its own view, with its progress.
            await page.locator('#tasks-tabs button[data-view="running"]').click()
            await page.locator(f'#tasks-table tr[data-id="{task_id}"] td.mono').first.click()
            dialog = page.locator("#task")
            await expect(dialog).to_be_visible()
            await expect(page).to_have_url(re.compile("#task=" + task_id))
            await expect(dialog.locator('[data-slot="state"]')).to_have_text("processing")
            text = dialog.locator('[data-slot="progress-text"]')
            await expect(text).to_contain_text("steps")
            first = await text.inner_text()
            await expect(text).not_to_have_text(first, timeout=10_000)  # read again every second: it moves
            await expect(dialog.locator('[data-act="run-now"]')).to_have_count(0)  # it runs: nothing to bring forward
            await dialog.locator('[data-act="cancel"]').click()
            await confirm_with_token(page, first=False)
            await expect(page.locator("#toasts")).to_contain_text("asked to stop it")
            await expect(dialog.locator('[data-slot="state"]')).to_have_text("cancelled", timeout=10_000)
            await expect(dialog.locator('[data-act="cancel"]')).to_have_count(0)
            # The cancelled run is in its history, by the worker that ran it.
            await expect(dialog.locator('[data-slot="runs"] tbody tr')).to_have_count(1)
            await expect(dialog.locator('[data-slot="runs"] tbody tr')).to_contain_text("cancelled")
            await until_state(queue, task_id, "cancelled")
            await dialog.locator('button[value="close"]').click()
            await expect(page).not_to_have_url(re.compile("#task="))
            # A task found by its id, or linked (#task=<id>), opens the same view.
            await page.locator("#tasks-find").fill(task_id)
            await page.locator("#tasks-open").click()
            await expect(dialog.locator('[data-slot="state"]')).to_have_text("cancelled")
        assert errors == []
    finally:
        await page.close()
        await server.close()
