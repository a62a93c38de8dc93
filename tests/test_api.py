"""The producer API over HTTP: accepted tasks, task records, and every bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from reliq import api
from reliq.connection import connect
from reliq.queue import Queue, make_spec
from reliq.redis_server import free_port
from reliq.settings import Settings
from tests.keyspace import keyspace
from tests.util import api_client


@pytest.fixture
async def http(queue: Queue, settings: Settings) -> AsyncIterator[TestClient]:
    async with api_client(queue, settings.replace(max_body=4096)) as client:
        yield client


async def test_post_task_accepts_the_seed_example(http: TestClient, queue: Queue) -> None:
    resp = await http.post("/task", data='{"type": "email-notification", "payload": "user@example.com"}',
                           headers={"Content-Type": "application/json"})
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "queued" and len(body["task_id"]) == 26
    info = await queue.get(body["task_id"])
    assert (info["type"], info["payload"], info["state"], info["max_retries"]) == (
        "email-notification", "user@example.com", "pending", 3)


async def test_task_ids_are_unique_and_sort_by_creation_time(http: TestClient) -> None:
    ids = []
    for _ in range(50):
        resp = await http.post("/task", json={"type": "noop"})
        ids.append((await resp.json())["task_id"])
    assert ids == sorted(ids) and len(set(ids)) == 50


async def test_get_task_returns_its_record_and_404_when_unknown(http: TestClient) -> None:
    resp = await http.post("/task", json={"type": "noop", "payload": {"a": 1}, "max_retries": 5})
    task_id = (await resp.json())["task_id"]
    resp = await http.get(f"/task/{task_id}")
    assert resp.status == 200
    body = await resp.json()
    assert {k: body[k] for k in ("task_id", "type", "state", "attempts", "max_retries", "last_error", "reason")} == {
        "task_id": task_id, "type": "noop", "state": "pending", "attempts": 0, "max_retries": 5,
        "last_error": None, "reason": None}
    assert body["enqueued_at"].endswith("Z") and body["started_at"] is None
    resp = await http.get("/task/NOPE")
    assert resp.status == 404 and "error" in await resp.json()


async def test_delay_schedules_the_task(http: TestClient) -> None:
    resp = await http.post("/task", json={"type": "noop", "delay_s": 30})
    body = await resp.json()
    assert resp.status == 202 and body["state"] == "scheduled"
    assert (await (await http.get(f"/task/{body['task_id']}")).json())["state"] == "scheduled"


async def test_cancel_keeps_the_record_and_refuses_a_finished_task(http: TestClient, queue: Queue) -> None:
    task_id = (await (await http.post("/task", json={"type": "noop"})).json())["task_id"]
    resp = await http.post(f"/task/{task_id}/cancel")
    assert resp.status == 200 and (await resp.json()) == {"status": "cancelled", "task_id": task_id,
                                                          "previous_state": "pending"}
    assert (await (await http.get(f"/task/{task_id}")).json())["state"] == "cancelled"
    resp = await http.post(f"/task/{task_id}/cancel")
    assert resp.status == 409 and (await resp.json())["state"] == "cancelled"
    assert (await http.post("/task/NOPE/cancel")).status == 404
    assert (await queue.snapshot())["cancelled"] == 1


async def test_delete_cancels_a_pending_task_and_its_record_is_gone(http: TestClient, queue: Queue) -> None:
    """DELETE means the resource is gone (REST, and schemathesis's use-after-free check)."""
    task_id = (await (await http.post("/task", json={"type": "noop"})).json())["task_id"]
    resp = await http.delete(f"/task/{task_id}")
    assert resp.status == 200 and (await resp.json()) == {"status": "deleted", "task_id": task_id,
                                                          "previous_state": "pending"}
    assert (await http.get(f"/task/{task_id}")).status == 404
    assert (await http.delete(f"/task/{task_id}")).status == 404
    assert await queue.redis.llen(queue.keys.pending) == 0
    assert (await queue.snapshot())["cancelled"] == 1  # counted, never silent
    assert (await http.delete("/task/NOPE")).status == 404


async def test_a_deleted_tasks_idempotency_key_enqueues_anew(http: TestClient, queue: Queue) -> None:
    """Found by schemathesis: a repeat of the request answered with the deleted task's id."""
    key = {"Idempotency-Key": "invoice-7"}
    first = (await (await http.post("/task", json={"type": "noop"}, headers=key)).json())["task_id"]
    assert (await http.delete(f"/task/{first}")).status == 200
    resp = await http.post("/task", json={"type": "noop"}, headers=key)
    second = (await resp.json())["task_id"]
    assert resp.status == 202 and second != first
    assert (await (await http.get(f"/task/{second}")).json())["state"] == "pending"
    cancelled = (await (await http.post("/task", json={"type": "noop"}, headers={"Idempotency-Key": "k2"})).json())
    assert (await http.post(f"/task/{cancelled['task_id']}/cancel")).status == 200  # kept: the key still answers
    again = await http.post("/task", json={"type": "noop"}, headers={"Idempotency-Key": "k2"})
    assert again.status == 200 and (await again.json())["task_id"] == cancelled["task_id"]


async def test_post_tasks_enqueues_a_batch_in_order(http: TestClient, queue: Queue) -> None:
    resp = await http.post("/tasks", json=[{"type": "noop", "payload": i} for i in range(10)])
    assert resp.status == 202
    ids = (await resp.json())["task_ids"]
    assert [(await queue.get(i))["payload"] for i in ids] == list(range(10))


BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("invalid JSON", {"data": "{nope", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
    ("missing type", {"json": {"payload": 1}}, 400, "'type'"),
    ("empty type", {"json": {"type": "  "}}, 400, "'type'"),
    ("non-string type", {"json": {"type": 7}}, 400, "'type'"),
    ("not an object", {"json": ["noop"]}, 400, "JSON object"),
    ("bad max_retries", {"json": {"type": "noop", "max_retries": -1}}, 400, "'max_retries'"),
    ("boolean max_retries", {"json": {"type": "noop", "max_retries": True}}, 400, "'max_retries'"),
    ("negative delay", {"json": {"type": "noop", "delay_s": -5}}, 400, "'delay_s'"),
    ("string delay", {"json": {"type": "noop", "delay_s": "soon"}}, 400, "'delay_s'"),
    ("oversized body", {"json": {"type": "noop", "payload": "x" * 5000}}, 413, "too large"),
    ("form content type", {"data": "type=noop"}, 415, "application/json"),
    ("text content type", {"data": '{"type":"noop"}', "headers": {"Content-Type": "text/plain"}}, 415,
     "application/json"),
]


@pytest.mark.parametrize(("case", "request_kwargs", "status", "says"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_bad_input_gets_a_clear_4xx_and_writes_nothing(
    http: TestClient, queue: Queue, redis: Redis,
    case: str, request_kwargs: dict[str, Any], status: int, says: str,
) -> None:
    resp = await http.post("/task", **request_kwargs)
    assert resp.status == status
    assert says in (await resp.json())["error"]
    assert await keyspace(redis, queue.name) == {}


async def test_a_bad_task_in_a_batch_rejects_the_whole_batch(
    http: TestClient, queue: Queue, redis: Redis
) -> None:
    resp = await http.post("/tasks", json=[{"type": "noop"}, {"type": ""}])
    assert resp.status == 400
    assert await keyspace(redis, queue.name) == {}


async def test_redis_unreachable_answers_503_with_retry_after(settings: Settings) -> None:
    down = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    redis = connect(down.redis_url)
    try:
        async with api_client(Queue(redis, down), down) as client:
            resp = await client.post("/task", json={"type": "noop"})
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            assert "Redis" in (await resp.json())["error"]
            assert (await client.get("/readyz")).status == 503
            assert (await client.get("/healthz")).status == 200
    finally:
        await redis.aclose()


async def test_readyz_when_redis_answers(http: TestClient) -> None:
    assert (await http.get("/readyz")).status == 200


async def test_a_wrong_method_is_a_405_that_says_what_is_allowed(http: TestClient) -> None:
    resp = await http.request("TRACE", "/task")
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    assert "error" in await resp.json()
    resp = await http.put("/task/abc")
    assert resp.status == 405 and set(resp.headers["Allow"].split(",")) == {"GET", "HEAD", "DELETE"}


async def test_an_unknown_query_parameter_is_a_400_not_ignored(http: TestClient) -> None:
    resp = await http.get("/task/abc", params={"queu": "other"})
    assert resp.status == 400 and "'queu'" in (await resp.json())["error"]
    assert (await http.delete("/task/abc", params={"wait": "1"})).status == 400
    assert (await http.get("/task/abc", params={"queue": "", "wait": "0"})).status == 404


async def test_the_queue_cache_and_its_coalescers_stay_bounded(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A producer naming ever new queues: each one's tasks land, and the API keeps at most
    MAX_QUEUES queues and the coalescers of those alone (once, neither was evicted)."""
    monkeypatch.setattr(api, "MAX_QUEUES", 3)
    producer = api.Producer(queue)
    sent = {}
    for i in range(8):
        name = f"{queue.name}-{i}"
        target = producer.queue(name)
        sent[name], _, _ = await producer.submit(target, make_spec("t", i), "memory")
        assert len(producer._queues) <= 3 and queue.name in producer._queues
        assert set(producer._coalescers) <= set(producer._queues)
    for name, task_id in sent.items():
        assert (await Queue(queue.redis, queue.settings, name).get(task_id))["state"] == "pending"
    # a queue evicted between the lookup and the submit comes back, coalescers and all
    stale = producer.queue(f"{queue.name}-old")
    for i in range(3):
        producer.queue(f"{queue.name}-new-{i}")
    assert stale.name not in producer._queues
    task_id, _, _ = await producer.submit(stale, make_spec("t", "late"), "memory")
    assert stale.name in producer._queues and set(producer._coalescers) <= set(producer._queues)
    assert (await stale.get(task_id))["payload"] == "late"
