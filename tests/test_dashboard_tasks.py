"""The dashboard's tasks panel in headless Chromium: each view, the filters, and each action.

Every view (pending, scheduled, retrying, running, dead) shows its tasks by id; each
action (run now, cancel, requeue), from a row and from a task's own page, is checked in
Redis by task id. tests/test_dashboard_task.py has a running task's page (progress, cancel).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, expect

from reliq.monitor import app as monitor
from reliq.queue import Outcome, Queue
from reliq.settings import Settings
from tests.test_dashboard import CHROMIUM, browser  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs the system Chromium")
TOKEN = "tasks-s3cret"
WORKER = "host:1:w1"


async def claim_and_settle(queue: Queue, outcome: str, retry_delay_ms: int = 0) -> str:
    [task], _ = await queue.claim(WORKER, 1)
    await queue.settle(WORKER, [Outcome(task, outcome, "boom: it broke", 1, retry_delay_ms)])
    return task.id


async def rows(page: Page) -> list[str]:
    """The task ids the tasks table shows, in order."""
    return await page.locator("#tasks-table tbody tr").evaluate_all("rs => rs.map(r => r.dataset.id)")


async def show(page: Page, view: str, ids: list[str]) -> None:
    await page.locator(f'#tasks-tabs button[data-view="{view}"]').click()
    await expect(page.locator(f'#tasks-tabs button[data-view="{view}"]')).to_have_attribute("aria-selected", "true")
    for task_id in ids:
        await expect(page.locator(f'#tasks-table tr[data-id="{task_id}"]')).to_be_visible()
    assert sorted(await rows(page)) == sorted(ids)


async def confirm_with_token(page: Page, first: bool) -> None:
    """OK the confirmation; the first write of the tab gets a 401 and the page asks for the token."""
    await page.locator('#confirm button[value="ok"]').click()
    if first:
        await expect(page.locator("#token")).to_be_visible()
        await page.locator('#token input[name="token"]').fill(TOKEN)
        await page.locator('#token button[value="ok"]').click()


async def test_the_tasks_panel_shows_every_state_and_its_actions_change_redis(
    browser: Browser, queue: Queue, settings: Settings,  # noqa: F811
) -> None:
    # One task of each kind, made in the order claims take them.
    await queue.enqueue("flaky", 0)
    retrying = await claim_and_settle(queue, "error", retry_delay_ms=3_600_000)
    await queue.enqueue("flaky", 1)  # failed twice: its page lists both runs
    again = await claim_and_settle(queue, "error", retry_delay_ms=3_600_000)
    assert await queue.run_now(again)
    assert await claim_and_settle(queue, "timeout", retry_delay_ms=3_600_000) == again
    await queue.enqueue("broken", 0)
    dead = await claim_and_settle(queue, "permanent")
    await queue.enqueue("broken", 1)
    dead_page = await claim_and_settle(queue, "permanent")
    running = [await queue.enqueue("busy", i) for i in range(2)]
    assert sorted(t.id for t in (await queue.claim(WORKER, 2))[0]) == sorted(running)
    pending = {"a": [await queue.enqueue("a", i) for i in range(3)], "b": [await queue.enqueue("b", 0)]}
    scheduled = [await queue.enqueue("later", i, delay=3600 + i) for i in range(2)]

    server = TestServer(monitor.create_app(queue, settings.replace(api_token=TOKEN)), host="127.0.0.1")
    await server.start_server()
    page = await browser.new_page(viewport={"width": 1300, "height": 1400})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        # Linked straight to a view: the address holds it.
        await page.goto(str(server.make_url("/")) + "#tasks=pending")
        everything = pending["a"] + pending["b"]
        for task_id in everything:
            await expect(page.locator(f'#tasks-table tr[data-id="{task_id}"]')).to_be_visible()
        assert await rows(page) == everything[::-1]  # newest first
        await expect(page.locator("#tasks-info")).to_have_text("1\u20134 of 4")
        await expect(page.locator(f'#tasks-table tr[data-id="{pending["a"][0]}"]')).to_contain_text("#1 in line")

        # Filtered by type; the address follows, and reloading keeps the filter.
        await page.locator("#tasks-type").fill("a")
        await page.locator('#tasks-filter button[type="submit"]').click()
        await expect(page.locator("#tasks-table tbody tr")).to_have_count(3)
        assert await rows(page) == pending["a"][::-1]
        assert "type=a" in page.url
        await page.reload()
        await expect(page.locator("#tasks-table tbody tr")).to_have_count(3)
        assert await page.locator("#tasks-type").input_value() == "a"
        await page.locator("#tasks-clear").click()
        await expect(page.locator("#tasks-table tbody tr")).to_have_count(4)

        await show(page, "scheduled", scheduled)
        assert await rows(page) == scheduled  # soonest due first
        await show(page, "retrying", [retrying, again])
        await expect(page.locator(f'#tasks-table tr[data-id="{retrying}"]')).to_contain_text("it broke")
        await show(page, "running", running)
        await expect(page.locator(f'#tasks-table tr[data-id="{running[0]}"]')).to_contain_text("w1")
        await show(page, "dead", [dead, dead_page])
        await expect(page.locator(f'#tasks-table tr[data-id="{dead}"]')).to_contain_text("permanent")

        # A dead row opens the dead-letter detail.
        await page.locator(f'#tasks-table tr[data-id="{dead}"] td.mono').first.click()
        await expect(page.locator('#detail [data-slot="id"]')).to_have_text(dead)
        await page.locator('#detail button[value="close"]').click()

        # Requeue a dead task: asked first, then it is pending in Redis and off the dead view.
        await page.locator(f'#tasks-table tr[data-id="{dead}"] button[data-act="requeue"]').click()
        await confirm_with_token(page, first=True)
        await expect(page.locator(f'#tasks-table tr[data-id="{dead}"]')).to_have_count(0)
        assert (await queue.get(dead))["state"] == "pending"

        # Run now: a scheduled and a retrying task become pending at once.
        await show(page, "scheduled", scheduled)
        await page.locator(f'#tasks-table tr[data-id="{scheduled[1]}"] button[data-act="run-now"]').click()
        await expect(page.locator(f'#tasks-table tr[data-id="{scheduled[1]}"]')).to_have_count(0)
        await show(page, "retrying", [retrying, again])
        await page.locator(f'#tasks-table tr[data-id="{retrying}"] button[data-act="run-now"]').click()
        await expect(page.locator(f'#tasks-table tr[data-id="{retrying}"]')).to_have_count(0)
        assert await queue.states([scheduled[1], retrying, scheduled[0]]) == ["pending", "pending", "scheduled"]
        await show(page, "pending", [dead, scheduled[1], retrying, *everything])

        # Cancel from a row: a pending task is cancelled at once (a running one: tests/test_dashboard_task.py).
        await page.locator(f'#tasks-table tr[data-id="{pending["b"][0]}"] button[data-act="cancel"]').click()
        await confirm_with_token(page, first=False)
        await expect(page.locator(f'#tasks-table tr[data-id="{pending["b"][0]}"]')).to_have_count(0)
        assert (await queue.get(pending["b"][0]))["state"] == "cancelled"

        # A task's own page: its record, the runs that failed, and the actions of its state.
        await show(page, "retrying", [again])
        await page.locator(f'#tasks-table tr[data-id="{again}"] td.mono').first.click()
        dialog = page.locator("#task")
        await expect(dialog.locator('[data-slot="state"]')).to_have_text("retrying")
        runs = dialog.locator('[data-slot="runs"] tbody tr')
        await expect(runs).to_have_count(2)
        await expect(runs.nth(0)).to_contain_text("error")
        await expect(runs.nth(0)).to_contain_text("boom: it broke")
        await expect(runs.nth(1)).to_contain_text("timeout")
        assert await runs.evaluate_all("rs => rs.map(r => r.dataset.attempt)") == ["1", "2"]
        await expect(dialog.locator('[data-act="requeue"]')).to_have_count(0)
        # Run now from the page: pending in Redis, and the page follows.
        await dialog.locator('[data-act="run-now"]').click()
        await expect(dialog.locator('[data-slot="state"]')).to_have_text("pending")
        assert (await queue.get(again))["state"] == "pending"
        await expect(dialog.locator('[data-act="run-now"]')).to_have_count(0)
        # Cancel from the page (asked first): cancelled in Redis, and no action is left.
        await dialog.locator('[data-act="cancel"]').click()
        await confirm_with_token(page, first=False)
        await expect(dialog.locator('[data-slot="state"]')).to_have_text("cancelled")
        assert (await queue.get(again))["state"] == "cancelled"
        await expect(dialog.locator('[data-slot="actions"] button')).to_have_count(0)
        await expect(dialog.locator('[data-slot="runs"] tbody tr')).to_have_count(2)
        await dialog.locator('button[value="close"]').click()

        # A dead task's page, linked by its id: Requeue sends it back to pending.
        await page.goto(str(server.make_url("/")) + f"#task={dead_page}")
        await expect(dialog.locator('[data-slot="state"]')).to_have_text("dead")
        await expect(runs).to_have_count(1)
        await expect(runs.nth(0)).to_contain_text("permanent")
        await expect(dialog.locator('[data-act="cancel"]')).to_have_count(0)
        await dialog.locator('[data-act="requeue"]').click()
        await confirm_with_token(page, first=False)
        await expect(page.locator("#toasts")).to_contain_text("Task requeued")
        await expect(dialog.locator('[data-slot="state"]')).to_have_text("pending")
        record = await queue.get(dead_page)
        assert (record["state"], record["attempts"], [r["outcome"] for r in record["runs"]]) == (
            "pending", 0, ["permanent"])
        assert dead_page in [i.decode() for i in await queue.redis.lrange(queue.keys.pending, 0, -1)]
        # A scheduled task's page offers run now too.
        await page.goto(str(server.make_url("/")) + f"#task={scheduled[0]}")
        await expect(dialog.locator('[data-slot="state"]')).to_have_text("scheduled")
        await expect(dialog.locator('[data-slot="no-runs"]')).to_be_visible()
        await dialog.locator('[data-act="run-now"]').click()
        await expect(dialog.locator('[data-slot="state"]')).to_have_text("pending")
        assert (await queue.get(scheduled[0]))["state"] == "pending"

        assert errors == []
    finally:
        await page.close()
        await server.close()
