"""The dashboard in headless Chromium: live counts, the dead-letter table and its buttons."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, async_playwright, expect

from reliq import api, builtins, partitions
from reliq.connection import connect
from reliq.monitor import app as monitor
from reliq.queue import Queue
from reliq.schedules import make_schedule
from reliq.settings import Settings
from reliq.worker import Worker
from reliq.worker.periodic_enqueuer import PeriodicEnqueuer

CHROMIUM = "/usr/bin/chromium"
assert builtins  # registers noop, sleep, fail and email-notification
TOKEN = "dash-s3cret"
#: Where to copy the screenshot taken under load (set to refresh docs/dashboard.png).
SCREENSHOT_TO = os.environ.get("RELIQ_SCREENSHOT")

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs the system Chromium")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless system Chromium (never a downloaded browser)."""
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        await b.close()


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Worker]:
    """An in-process worker on its own connection, stopped gracefully on exit."""
    redis = connect(settings.redis_url, max_connections=8)
    worker = Worker(Queue(redis, settings), settings)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await task
        await redis.aclose()


@contextlib.asynccontextmanager
async def monitor_page(browser: Browser, queue: Queue, settings: Settings) -> AsyncIterator[tuple[Page, list[str]]]:
    """The monitor of ``queue`` served on a free port, open in a page; the page's script errors."""
    server = TestServer(monitor.create_app(queue, settings), host="127.0.0.1")
    await server.start_server()
    page = await browser.new_page(viewport={"width": 1400, "height": 1200})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(str(server.make_url("/")))
        yield page, errors
    finally:
        await page.close()
        await server.close()


async def post_tasks(session: aiohttp.ClientSession, url: str, tasks: list[dict[str, object]]) -> list[str]:
    async with session.post(url + "tasks", json=tasks) as resp:
        assert resp.status == 202, await resp.text()
        ids: list[str] = (await resp.json())["task_ids"]
        return ids


async def stat(page: Page, name: str) -> str:
    return await page.locator(f'[data-stat="{name}"]').inner_text()


async def test_dashboard_shows_live_counts_and_manages_dead_letters(
    browser: Browser, queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    settings = settings.replace(api_token=TOKEN, concurrency=16)
    api_server = TestServer(api.create_app(queue, settings), host="127.0.0.1")
    mon_server = TestServer(monitor.create_app(queue, settings), host="127.0.0.1")
    await api_server.start_server()
    await mon_server.start_server()
    api_url, mon_url = str(api_server.make_url("/")), str(mon_server.make_url("/"))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    page = await browser.new_page(viewport={"width": 1400, "height": 1500})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            await page.goto(mon_url)
            await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=10_000)
            await expect(page.locator('[data-stat="pending"]')).to_have_text("0")

            # No worker yet: the tasks wait, and the page shows them arrive without a reload.
            failing: list[dict[str, object]] = [{"type": "fail", "payload": i, "max_retries": 0} for i in range(3)]
            fails = await post_tasks(http, api_url, failing)
            await post_tasks(http, api_url, [{"type": "noop", "payload": i} for i in range(40)])
            await expect(page.locator('[data-stat="pending"]')).to_have_text("43", timeout=5_000)

            async with running_worker(settings) as worker:
                await expect(page.locator('[data-stat="pending"]')).to_have_text("0", timeout=10_000)
                await expect(page.locator('[data-stat="workers"]')).to_have_text("1")
                await expect(page.locator(f'#workers tr[data-worker="{worker.id}"]')).to_be_visible()
                for task_id in fails:
                    await expect(page.locator(f'#dead-table tr[data-id="{task_id}"]')).to_be_visible(timeout=10_000)
                await expect(page.locator('[data-stat="dead_letter"]')).to_have_text("3")

                # Under load: a stream of short tasks, some failing, for the screenshot.
                async def load() -> None:
                    for i in range(12):
                        batch = [{"type": "sleep", "payload": 0.05} for _ in range(40)]
                        batch += [{"type": "email-notification", "payload": f"user{i}@example.com"}] * 10
                        await post_tasks(http, api_url, batch)
                        await asyncio.sleep(0.2)

                await load()
                await expect(page.locator('[data-stat="ok_rate"]')).not_to_have_text("0")
                await expect(page.locator('#types tr[data-type="sleep"]')).to_be_visible()
                png = await page.screenshot(path=SCREENSHOT_TO or str(tmp_path / "dashboard.png"), full_page=True)
                assert len(png) > 10_000

            # The worker has stopped, so a requeued task stays in pending and leaves the table.
            row = page.locator(f'#dead-table tr[data-id="{fails[0]}"]')
            await row.locator('button[data-act="requeue"]').click()
            await expect(page.locator("#confirm")).to_be_visible()
            await page.locator('#confirm button[value="ok"]').click()
            # The token is set, so the mutating call gets 401 and the page asks for it once.
            await expect(page.locator("#token")).to_be_visible()
            await page.locator('#token input[name="token"]').fill(TOKEN)
            await page.locator('#token button[value="ok"]').click()
            await expect(row).to_have_count(0, timeout=5_000)
            assert (await queue.get(fails[0]))["state"] == "pending"
            await expect(page.locator('[data-stat="dead_letter"]')).to_have_text("2", timeout=5_000)

            # Select a row and delete the selection (asked first, like every action).
            await page.locator(f'#dead-table tr[data-id="{fails[1]}"] td.pick input').check()
            await expect(page.locator("#selection")).to_contain_text("1 selected")
            await page.locator("#delete-selected").click()
            await page.locator('#confirm button[value="ok"]').click()
            await expect(page.locator(f'#dead-table tr[data-id="{fails[1]}"]')).to_have_count(0, timeout=5_000)
            assert await queue.dead_ids() == [fails[2]]

            # Purge asks first; cancelling keeps everything.
            await page.locator("#purge").click()
            await expect(page.locator("#confirm")).to_be_visible()
            await expect(page.locator('#confirm [data-slot="title"]')).to_contain_text("Purge")
            await page.locator('#confirm button[value="cancel"]').click()
            await expect(page.locator(f'#dead-table tr[data-id="{fails[2]}"]')).to_be_visible()
            assert await queue.dead_ids() == [fails[2]]

            await page.locator("#purge").click()
            await page.locator('#confirm button[value="ok"]').click()
            await expect(page.locator("#dead-empty")).to_be_visible(timeout=5_000)
            assert await queue.dead_ids() == []
            assert errors == []
    finally:
        await page.close()
        await mon_server.close()
        await api_server.close()


async def test_the_pending_card_shows_pending_by_priority_once_another_priority_is_in_use(
    browser: Browser, queue: Queue, settings: Settings
) -> None:
    await queue.enqueue("noop", None)
    async with monitor_page(browser, queue, settings) as (page, errors):
        await expect(page.locator('[data-stat="pending"]')).to_have_text("1", timeout=5_000)
        await expect(page.locator('[data-sub="priorities"]')).to_be_hidden()  # only the default: nothing to say
        for priority in (9, 9, 0):
            await queue.enqueue("noop", None, priority=priority)
        await expect(page.locator('[data-stat="pending"]')).to_have_text("4", timeout=5_000)
        await expect(page.locator('[data-sub="priorities"]')).to_have_text("by priority: 9: 2 \u00b7 5: 1 \u00b7 0: 1")
    assert errors == []


async def test_dashboard_falls_back_to_polling_when_the_stream_is_blocked(
    browser: Browser, queue: Queue, settings: Settings
) -> None:
    server = TestServer(monitor.create_app(queue, settings), host="127.0.0.1")
    await server.start_server()
    page = await browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    try:
        await page.route("**/events", lambda route: route.abort())
        await page.goto(str(server.make_url("/")))
        await expect(page.locator("#conn")).to_have_attribute("data-state", "polling", timeout=10_000)
        await queue.enqueue("noop", None)
        await expect(page.locator('[data-stat="pending"]')).to_have_text("1", timeout=5_000)
        # Nothing overflows the phone's width.
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390
    finally:
        await page.close()
        await server.close()


async def test_a_private_dashboard_asks_for_the_token_before_showing_anything(
    browser: Browser, queue: Queue, settings: Settings
) -> None:
    settings = settings.replace(api_token=TOKEN, private=True)
    await queue.enqueue("noop", None)
    async with monitor_page(browser, queue, settings) as (page, _):
        await expect(page.locator("#token")).to_be_visible(timeout=5_000)
        await expect(page.locator('[data-stat="pending"]')).to_have_text("\u2013")  # nothing shown yet
        await page.locator('#token input[name="token"]').fill(TOKEN)
        await page.locator('#token button[value="ok"]').click()
        await expect(page.locator('[data-stat="pending"]')).to_have_text("1", timeout=5_000)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live")


async def test_a_monitor_of_several_queues_lets_the_page_switch_between_them(
    browser: Browser, queue: Queue, settings: Settings
) -> None:
    other_name = settings.queue + "-low"
    settings = settings.replace(queues=(settings.queue, other_name))
    await Queue(queue.redis, settings, other_name).enqueue("noop", None)
    server = TestServer(monitor.create_app(queue, settings), host="127.0.0.1")
    await server.start_server()
    page = await browser.new_page()
    try:
        await page.goto(str(server.make_url("/")))
        await expect(page.locator("#queue-select")).to_have_value(settings.queue, timeout=5_000)
        await expect(page.locator('[data-stat="pending"]')).to_have_text("0", timeout=5_000)
        await page.locator("#queue-select").select_option(other_name)
        await expect(page).to_have_url(f"{server.make_url('/')}?queue={other_name}")
        await expect(page.locator('[data-stat="pending"]')).to_have_text("1", timeout=5_000)
        await expect(page.locator("#queue-select")).to_have_value(other_name)
    finally:
        await page.close()
        await server.close()


async def test_dashboard_edits_a_dead_payload_then_requeues_it_with_the_edit_recorded(
    browser: Browser, queue: Queue, settings: Settings
) -> None:
    settings = settings.replace(api_token=TOKEN)
    task_id = await queue.enqueue("fail", {"invoice": 1, "email": "old@example.com"}, max_retries=0)
    await Worker(queue, settings, burst=True).run()
    server = TestServer(monitor.create_app(queue, settings), host="127.0.0.1")
    await server.start_server()
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(str(server.make_url("/")))
        row = page.locator(f'#dead-table tr[data-id="{task_id}"]')
        await row.locator("td.mono").click()
        await expect(page.locator("#detail")).to_be_visible()
        await page.locator('#detail button[value="edit"]').click()
        editor = page.locator("#edit textarea")
        await expect(editor).to_have_value('{\n  "invoice": 1,\n  "email": "old@example.com"\n}')
        await editor.fill("{not json")
        await page.locator('#edit button[value="requeue"]').click()
        await expect(page.locator('#edit [data-slot="problem"]')).to_contain_text("Not valid JSON")
        assert (await queue.get(task_id))["payload"] == {"invoice": 1, "email": "old@example.com"}
        await editor.fill('{"invoice": 1, "email": "new@example.com"}')
        await page.locator('#edit button[value="requeue"]').click()
        await expect(page.locator("#token")).to_be_visible()  # writes need the token
        await page.locator('#token input[name="token"]').fill(TOKEN)
        await page.locator('#token button[value="ok"]').click()
        await expect(row).to_have_count(0, timeout=5_000)
        info = await queue.get(task_id)
        assert info["state"] == "pending" and info["payload"] == {"invoice": 1, "email": "new@example.com"}
        [[edits]] = await queue.task_fields([task_id], ["edits"])
        [edit] = orjson.loads(edits or b"[]")
        assert orjson.loads(edit["previous_payload"]) == {"invoice": 1, "email": "old@example.com"}
        assert "write token" in edit["by"]
        assert errors == []
    finally:
        await page.close()
        await server.close()


async def test_dashboard_pauses_and_resumes_the_queue_and_one_type(
    browser: Browser, queue: Queue, settings: Settings
) -> None:
    async with monitor_page(browser, queue, settings) as (page, errors):
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=10_000)
        button = page.locator("#pause-queue")
        await expect(button).to_have_text("Pause")
        await button.click()
        await expect(page.locator("#confirm")).to_be_visible()  # pausing asks first
        await page.locator('#confirm button[value="ok"]').click()
        await expect(button).to_have_text("Resume", timeout=5_000)
        await expect(page.locator("#paused-banner")).to_contain_text("Queue paused")
        assert (await queue.paused())["queue"] is not None

        async with running_worker(settings):
            task_id = await queue.enqueue("noop", None)
            await asyncio.sleep(1.0)
            assert (await queue.get(task_id))["state"] == "pending"  # the worker claims nothing
            await button.click()  # resuming asks nothing
            await expect(button).to_have_text("Pause", timeout=5_000)
            await expect(page.locator("#paused-banner")).to_be_hidden()
            await expect(page.locator('#types tr[data-type="noop"]')).to_be_visible(timeout=10_000)
        assert (await queue.get(task_id))["state"] == "succeeded"

        # One type, from its row in the task-types table.
        row = page.locator('#types tr[data-type="noop"]')
        await row.locator('button[data-act="pause"]').click()
        await page.locator('#confirm button[value="ok"]').click()
        await expect(row.locator('button[data-act="resume"]')).to_be_visible(timeout=5_000)
        await expect(page.locator("#paused-banner")).to_contain_text("Paused type noop")
        assert set((await queue.paused())["types"]) == {"noop"}
        await row.locator('button[data-act="resume"]').click()
        await expect(row.locator('button[data-act="pause"]')).to_be_visible(timeout=5_000)
        assert await queue.paused() == {"queue": None, "types": {}}
        assert errors == []


async def test_dashboard_lists_schedules_with_next_and_last_run_and_paused(
    browser: Browser, queue: Queue, settings: Settings
) -> None:
    every_minute = make_schedule("minutely", type="noop", every=60)
    await queue.schedule_put(every_minute, "api")
    await queue.redis.hset(queue.keys.schedule("minutely"), "upto", 1)  # long unattended: one missed slot runs
    await queue.schedule_put(make_schedule("minutely", type="noop", every=60, missed="once"), "api")
    enqueued = (await PeriodicEnqueuer(queue).run_once()).enqueued
    await queue.schedule_put(make_schedule("daily-report", type="send-report", cron="0 9 * * mon-fri",
                                           tz="Europe/Paris"), "api")
    await queue.schedule_pause("daily-report", True, "ops")
    async with monitor_page(browser, queue, settings) as (page, errors):
        rows = page.locator("#schedules tbody tr")
        await expect(rows).to_have_count(2, timeout=10_000)
        daily, minutely = rows.nth(0), rows.nth(1)  # by name
        await expect(daily).to_have_attribute("data-schedule", "daily-report")
        await expect(daily).to_contain_text("0 9 * * mon-fri (Europe/Paris)")
        await expect(daily.locator('[data-col="next"]')).to_have_text("paused")
        await expect(daily.locator('[data-col="last"]')).to_have_text("never")
        await expect(minutely).to_contain_text("every 60 s")
        await expect(minutely.locator('[data-col="next"]')).to_contain_text("in ")
        await expect(minutely.locator('[data-col="last"]')).to_contain_text("pending")
        assert 1 <= len(enqueued) <= 2  # the newest missed slot, and the one due within the minute if any
        await expect(minutely.locator("td").nth(5)).to_have_text(str(len(enqueued)))  # enqueued
        await expect(minutely.locator("td").nth(6)).not_to_have_text("0")  # skipped, counted
        await expect(page.locator("#schedules-empty")).to_be_hidden()
        assert errors == []


async def test_a_partitioned_queue_shows_as_one_with_a_partitions_panel(
    browser: Browser, queue: Queue, settings: Settings
) -> None:
    async with monitor_page(browser, queue, settings) as (page, errors):
        await expect(page.locator('[data-stat="pending"]')).to_have_text("0", timeout=5_000)
        await expect(page.locator("#partitions-panel")).to_be_hidden()  # one partition: nothing to break down
    await partitions.resolve(queue, 3)
    for i in range(7):
        await queue.enqueue("noop", i)
    async with monitor_page(browser, queue, settings) as (page, errors):
        await expect(page.locator('[data-stat="pending"]')).to_have_text("7", timeout=5_000)
        panel = page.locator("#partitions-panel")
        await expect(panel).to_be_visible()
        await expect(panel.locator("tbody tr")).to_have_count(3)
        counts = [await panel.locator(f'tr[data-partition="{i}"] td').nth(3).inner_text() for i in range(3)]
        assert sorted(map(int, counts)) == [2, 2, 3]
        await expect(panel.locator('tr[data-partition="1"] td').nth(1)).to_have_text(f"{{{queue.name}:1}}")
    assert errors == []
