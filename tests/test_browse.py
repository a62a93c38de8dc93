"""Every task on the dashboard: pages of each state, filters by type and key, cursors, run now.

The listing's reads are checked against what each task id is, in which Redis structure;
the bounded work at a million pending tasks is tests/test_browse_million.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from reliq.errors import InvalidTask
from reliq.monitor import app as monitor
from reliq.monitor import browse
from reliq.monitor.browse import TaskFilter
from reliq.queue import Outcome, Queue
from reliq.settings import Settings

WORKER = "host:1:w1"


@pytest.fixture
async def http(queue: Queue, settings: Settings) -> AsyncIterator[TestClient]:
    client = TestClient(TestServer(monitor.create_app(queue, settings)))
    await client.start_server()
    yield client
    await client.close()


async def every_page(queue: Queue, flt: TaskFilter, limit: int, budget: int = browse.SCAN_BUDGET) -> list[Any]:
    """Follow the cursor from the start to the end; every page's rows, in order."""
    rows, cursor, pages = [], "", 0
    while True:
        page = await browse.page(queue, flt, cursor, limit, budget)
        assert len(page["items"]) <= limit
        rows += page["items"]
        pages += 1
        assert pages < 1000
        if page["next_cursor"] is None:
            return rows
        cursor = page["next_cursor"]


async def claim_and_settle(queue: Queue, outcome: str, retry_delay_ms: int = 0) -> str:
    """Claim the next pending task as WORKER and settle it with ``outcome``; its id."""
    [task], _ = await queue.claim(WORKER, 1)
    assert (await queue.settle(WORKER, [Outcome(task, outcome, "boom: it broke", 1, retry_delay_ms)]))[0] == 1
    return task.id


async def test_pending_pages_newest_first_and_the_cursor_reaches_every_task_once(queue: Queue) -> None:
    ids = [await queue.enqueue("a", i) for i in range(7)]
    first = await browse.page(queue, TaskFilter("pending"), limit=3)
    assert [r["task_id"] for r in first["items"]] == ids[::-1][:3]
    assert first["total"] == 7 and first["total_exact"] and first["scanned"] == 3
    assert first["next_cursor"] == "pending:3:"
    assert [r["position"] for r in first["items"]] == [0, 1, 2]
    row = first["items"][0]
    assert row["type"] == "a" and row["state"] == "pending" and row["source"] == "pending"
    assert row["enqueued_at"] and row["queued_at"] and row["attempts"] == 0 and row["started_at"] is None
    rows = await every_page(queue, TaskFilter("pending"), limit=3)
    assert [r["task_id"] for r in rows] == ids[::-1]


async def test_a_type_filter_reads_within_its_budget_and_its_cursor_goes_on(queue: Queue) -> None:
    ids: dict[str, list[str]] = {"a": [], "b": []}
    for i in range(40):
        kind = "b" if i % 5 == 0 else "a"
        ids[kind].append(await queue.enqueue(kind, i))
    page = await browse.page(queue, TaskFilter("pending", "b"), limit=50, budget=10)
    # 10 ids read from the newest: two of them are b's; the next page goes on from the 11th.
    assert page["scanned"] == 10
    assert [r["task_id"] for r in page["items"]] == ids["b"][::-1][:2]
    assert page["next_cursor"] == "pending:10:"
    rows = await every_page(queue, TaskFilter("pending", "b"), limit=3, budget=7)
    assert [r["task_id"] for r in rows] == ids["b"][::-1]
    assert {r["type"] for r in rows} == {"b"}
    assert await every_page(queue, TaskFilter("pending", "nobody"), limit=5, budget=9) == []


async def test_scheduled_and_retrying_tasks_share_the_delayed_set_and_the_state_tells_them_apart(
    queue: Queue,
) -> None:
    scheduled = [await queue.enqueue("later", i, delay=60 + i) for i in range(3)]
    await queue.enqueue("r", 0)
    retrying = await claim_and_settle(queue, "error", retry_delay_ms=30_000)
    page = await browse.page(queue, TaskFilter("scheduled"))
    assert [r["task_id"] for r in page["items"]] == scheduled  # soonest due first
    assert page["total"] == 4 and not page["total_exact"]
    assert all(r["due_at"] and r["state"] == "scheduled" for r in page["items"])
    page = await browse.page(queue, TaskFilter("retrying"))
    [row] = page["items"]
    assert row["task_id"] == retrying and row["state"] == "retrying" and row["attempts"] == 1
    assert row["last_error"] and "it broke" in row["last_error"] and row["due_at"]
    assert [r["task_id"] for r in (await browse.page(queue, TaskFilter("scheduled", "r")))["items"]] == []


async def test_running_tasks_are_read_from_each_workers_list_and_dead_ones_from_the_dead_list(
    queue: Queue,
) -> None:
    await queue.enqueue("gone", 0)
    dead = await claim_and_settle(queue, "permanent")
    running = [await queue.enqueue("busy", i) for i in range(3)]
    claimed = [t.id for t in (await queue.claim(WORKER, 3))[0]]
    assert sorted(claimed) == sorted(running)
    page = await browse.page(queue, TaskFilter("processing"))
    assert sorted(r["task_id"] for r in page["items"]) == sorted(running)
    assert {r["source"] for r in page["items"]} == {f"processing:{WORKER}"}
    assert all(r["state"] == "processing" and r["started_at"] and r["attempts"] == 1 for r in page["items"])
    assert page["sources"] == [{"source": f"processing:{WORKER}", "length": 3}]
    page = await browse.page(queue, TaskFilter("dead"))
    [row] = page["items"]
    assert row["task_id"] == dead and row["reason"] == "permanent" and row["finished_at"]


async def test_a_paused_types_held_tasks_are_pending_and_listed_after_the_pending_list(queue: Queue) -> None:
    await queue.pause("slow", "test")
    held = [await queue.enqueue("slow", i) for i in range(2)]
    other = await queue.enqueue("fast", 0)
    claimed, _ = await queue.claim(WORKER, 10)  # meets the paused type's tasks: sets them aside
    assert [t.id for t in claimed] == [other]
    assert await queue.states(held) == ["pending", "pending"]
    page = await browse.page(queue, TaskFilter("pending"))
    assert [(r["task_id"], r["source"]) for r in page["items"]] == [(i, "held:slow") for i in held[::-1]]
    assert page["sources"] == [{"source": "pending", "length": 0}, {"source": "held:slow", "length": 2}]
    assert (await browse.page(queue, TaskFilter("pending", "fast")))["sources"] == [
        {"source": "pending", "length": 0}]


async def test_a_cursor_whose_list_is_gone_goes_on_with_the_next_one(queue: Queue) -> None:
    await queue.pause("slow", "test")
    held = await queue.enqueue("slow", 0)
    assert (await queue.claim(WORKER, 10))[0] == []
    page = await browse.page(queue, TaskFilter("pending"), "held:0:aaa")  # before held:slow
    assert [r["task_id"] for r in page["items"]] == [held]
    assert (await browse.page(queue, TaskFilter("pending"), "held:0:zzz"))["items"] == []
    with pytest.raises(InvalidTask):
        await browse.page(queue, TaskFilter("pending"), "bogus")


async def test_the_key_filter_reads_the_keys_own_list_on_pending_and_the_record_elsewhere(queue: Queue) -> None:
    page = await browse.page(queue, TaskFilter("pending", "webhook", "customer-42"))
    assert page["sources"] == [{"source": "group:7:webhook:customer-42", "length": 0}]
    with pytest.raises(InvalidTask, match="give 'type'"):
        await browse.page(queue, TaskFilter("pending", None, "customer-42"))
    await queue.enqueue("x", 0, delay=60)
    assert (await browse.page(queue, TaskFilter("scheduled", None, "k")))["items"] == []


async def test_the_tasks_endpoint_answers_pages_and_refuses_bad_input(http: TestClient, queue: Queue) -> None:
    ids = [await queue.enqueue("a", i) for i in range(3)]
    resp = await http.get("/tasks", params={"state": "pending", "limit": "2"})
    assert resp.status == 200
    body = await resp.json()
    assert [r["task_id"] for r in body["items"]] == ids[::-1][:2]
    resp = await http.get("/tasks", params={"state": "pending", "cursor": body["next_cursor"]})
    assert [r["task_id"] for r in (await resp.json())["items"]] == [ids[0]]
    assert (await (await http.get("/tasks", params={"state": "running"})).json())["state"] == "processing"
    for params in ({"state": "finished"}, {"limit": "0"}, {"limit": "x"}, {"cursor": "nope"},
                   {"key": "k"}, {"type": "t" * 201}):
        resp = await http.get("/tasks", params=params)
        assert resp.status == 400, params
        assert "error" in await resp.json()


async def test_run_now_makes_a_scheduled_or_retrying_task_pending_at_once(http: TestClient, queue: Queue) -> None:
    later = await queue.enqueue("later", 0, delay=3600)
    await queue.enqueue("r", 0)
    retrying = await claim_and_settle(queue, "error", retry_delay_ms=3_600_000)
    pending = await queue.enqueue("p", 0)
    for task_id in (later, retrying):
        resp = await http.post(f"/task/{task_id}/run")
        assert resp.status == 200, await resp.text()
        assert (await resp.json()) == {"status": "pending", "task_id": task_id}
    assert await queue.states([later, retrying]) == ["pending", "pending"]
    rows = (await browse.page(queue, TaskFilter("pending")))["items"]
    assert sorted(r["task_id"] for r in rows) == sorted([later, retrying, pending])
    assert (await queue.backlog()) == (3, 0)
    resp = await http.post(f"/task/{pending}/run")
    assert resp.status == 409 and (await resp.json())["state"] == "pending"
    assert (await http.post("/task/NOPE/run")).status == 404


async def test_requeue_sends_a_dead_task_back_to_pending_and_refuses_any_other(http: TestClient,
                                                                               queue: Queue) -> None:
    await queue.enqueue("gone", 0)
    dead = await claim_and_settle(queue, "permanent")
    resp = await http.post(f"/task/{dead}/requeue")
    assert resp.status == 200 and (await resp.json()) == {"status": "requeued", "task_id": dead}
    assert (await queue.get(dead))["state"] == "pending" and (await queue.get(dead))["attempts"] == 0
    resp = await http.post(f"/task/{dead}/requeue")
    assert resp.status == 409 and (await resp.json())["state"] == "pending"
    assert (await http.post("/task/NOPE/requeue")).status == 404


async def test_pending_lists_the_priorities_highest_first_and_the_cursor_crosses_them(queue: Queue) -> None:
    low = [await queue.enqueue("t", i, priority=0) for i in range(2)]
    default = [await queue.enqueue("t", i) for i in range(2)]
    high = [await queue.enqueue("t", i, priority=9) for i in range(2)]
    page = await browse.page(queue, TaskFilter("pending"))
    assert [r["task_id"] for r in page["items"]] == high[::-1] + default[::-1] + low[::-1]
    assert [r["priority"] for r in page["items"]] == [9, 9, 5, 5, 0, 0]
    assert page["sources"] == [{"source": "pending:9", "length": 2}, {"source": "pending", "length": 2},
                               {"source": "pending:0", "length": 2}]
    assert page["total"] == 6
    rows = await every_page(queue, TaskFilter("pending"), limit=1)
    assert [r["task_id"] for r in rows] == high[::-1] + default[::-1] + low[::-1]
    # A cursor into a priority's list that emptied meanwhile goes on with the next list.
    assert [r["task_id"] for r in (await browse.page(queue, TaskFilter("pending"), "pending:1:7"))["items"]] == \
        default[::-1] + low[::-1]
