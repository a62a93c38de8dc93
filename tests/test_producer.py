"""Producer features end to end over HTTP, each checked against the Redis state it leaves."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from reliq.connection import connect
from reliq.errors import ConfigError
from reliq.formats import retries_of, split_body
from reliq.keys import QueueKeys
from reliq.preflight import redis_risks
from reliq.queue import Queue, text
from reliq.redis_server import RedisServer
from reliq.roles import check_exposure
from reliq.settings import Settings
from tests import procs
from tests.keyspace import keyspace
from tests.util import api_client, eventually, payload_text


@pytest.fixture
async def http(queue: Queue, settings: Settings) -> AsyncIterator[TestClient]:
    async with api_client(queue, settings) as client:
        yield client


async def post(http: TestClient, body: Any, **headers: str) -> tuple[int, dict[str, Any]]:
    resp = await http.post("/task", json=body, headers=headers)
    return resp.status, await resp.json()


async def test_idempotency_key_returns_the_same_task_with_200_and_enqueues_once(
    http: TestClient, queue: Queue, redis: Redis
) -> None:
    status1, first = await post(http, {"type": "noop", "payload": 1}, **{"Idempotency-Key": "order-42"})
    status2, second = await post(http, {"type": "noop", "payload": 2}, **{"Idempotency-Key": "order-42"})
    assert (status1, status2) == (202, 200)
    assert second["task_id"] == first["task_id"] and second["status"] == "duplicate"
    space = await keyspace(redis, queue.name)
    assert space["pending"] == [first["task_id"]] and space["stats"]["enqueued"] == "1"
    assert payload_text(space[f"task:{first['task_id']}"]) == "1"
    assert 0 < await redis.pttl(queue.keys.idem("order-42")) <= queue.settings.idempotency_ttl * 1000


async def test_concurrent_requests_with_one_idempotency_key_make_one_task(
    http: TestClient, queue: Queue, redis: Redis
) -> None:
    results = await asyncio.gather(*[post(http, {"type": "noop", "payload": i}, **{"Idempotency-Key": "race"})
                                     for i in range(20)])
    assert len({body["task_id"] for _, body in results}) == 1
    assert sorted(status for status, _ in results) == [200] * 19 + [202]
    space = await keyspace(redis, queue.name)
    assert len(space["pending"]) == 1 and space["stats"]["enqueued"] == "1"


async def test_run_at_schedules_for_that_time_and_a_past_time_runs_now(
    http: TestClient, queue: Queue, redis: Redis
) -> None:
    when = datetime.now(UTC) + timedelta(hours=1)
    status, body = await post(http, {"type": "noop", "run_at": when.isoformat().replace("+00:00", "Z")})
    assert (status, body["state"]) == (202, "scheduled")
    assert await redis.zscore(queue.keys.delayed, body["task_id"]) == int(when.timestamp() * 1000)
    assert (await queue.get(body["task_id"]))["state"] == "scheduled"
    status, body = await post(http, {"type": "noop", "run_at": "2001-01-01T00:00:00+02:00"})
    assert status == 202 and (await queue.get(body["task_id"]))["state"] == "pending"


@pytest.mark.parametrize(("run_at", "state"), [
    ("2030-01-01t00:00:00z", "scheduled"), ("9999-12-31T23:59:59-23:59", "scheduled"),
    ("0000-01-01T00:00:00Z", "pending"), ("2001-01-01T00:00:00.123456789+17:29", "pending")])
async def test_every_rfc_3339_time_the_schema_admits_is_accepted(http: TestClient, queue: Queue, run_at: str,
                                                                  state: str) -> None:
    status, body = await post(http, {"type": "noop", "run_at": run_at})
    assert status == 202, body
    assert (await queue.get(body["task_id"]))["state"] == state


@pytest.mark.parametrize("run_at", ["tomorrow", "2030-01-01T00:00:00", 17, "2030-13-01T00:00:00Z",
                                    "2030-01-01T23:59:60Z", "2030-02-30T00:00:00Z", "2030-01-01 00:00:00Z",
                                    "2030-01-01T00:00Z"])
async def test_bad_run_at_is_refused(http: TestClient, queue: Queue, redis: Redis, run_at: Any) -> None:
    status, body = await post(http, {"type": "noop", "run_at": run_at})
    assert status == 400 and "'run_at'" in body["error"]
    assert await keyspace(redis, queue.name) == {}


async def test_delete_cancels_a_scheduled_task_and_asks_the_worker_of_a_running_one(
    http: TestClient, queue: Queue, redis: Redis
) -> None:
    _, scheduled = await post(http, {"type": "noop", "delay_s": 60})
    resp = await http.delete(f"/task/{scheduled['task_id']}")
    assert resp.status == 200 and (await resp.json())["previous_state"] == "scheduled"
    assert await redis.zcard(queue.keys.delayed) == 0
    _, running = await post(http, {"type": "noop"})
    await queue.claim("w", 1)
    resp = await http.delete(f"/task/{running['task_id']}")
    assert resp.status == 202 and (await resp.json()) == {"status": "cancelling", "task_id": running["task_id"],
                                                          "previous_state": "processing"}
    assert await redis.smembers(queue.keys.cancels("w")) == {running["task_id"].encode()}


async def test_a_task_names_its_queue(http: TestClient, queue: Queue, redis: Redis) -> None:
    other = queue.name + "-critical"
    status, body = await post(http, {"type": "noop", "queue": other})
    assert status == 202 and body["queue"] == other
    assert [i.decode() for i in await redis.lrange(QueueKeys(other).pending, 0, -1)] == [body["task_id"]]
    assert (await http.get(f"/task/{body['task_id']}?queue={other}")).status == 200
    assert (await http.get(f"/task/{body['task_id']}")).status == 404
    status, body = await post(http, {"type": "noop", "queue": "bad{name}"})
    assert status == 400 and "queue name" in body["error"]


async def test_a_batch_goes_to_one_queue(http: TestClient, queue: Queue, redis: Redis) -> None:
    resp = await http.post("/tasks", json=[{"type": "noop", "queue": "a"}, {"type": "noop", "queue": "b"}])
    assert resp.status == 400 and "one queue" in (await resp.json())["error"]
    other = queue.name + "-batch"
    resp = await http.post("/tasks", json={"queue": other, "tasks": [{"type": "noop"}] * 3})
    assert resp.status == 202
    assert await redis.llen(QueueKeys(other).pending) == 3
    assert await keyspace(redis, queue.name) == {}


async def test_per_task_timeout_and_retries_are_kept_within_bounds(http: TestClient, queue: Queue) -> None:
    status, body = await post(http, {"type": "noop", "timeout_s": 2.5, "max_retries": 7})
    assert status == 202
    record = {text(k): v for k, v in (await queue.redis.hgetall(queue.keys.task(body["task_id"]))).items()}
    # format 2: formats.OPTS_FIELDS in the body alone, where the claim and the monitor read them
    assert split_body(record["body"]) == (b"null", 7, 2500, "", "") and retries_of(record) == 7
    assert not {"opts", "max_retries", "payload"} & set(record)
    for bad in ({"timeout_s": 0}, {"timeout_s": 10**9}, {"max_retries": 1000}):
        status, _ = await post(http, {"type": "noop", **bad})
        assert status == 400


async def test_admission_control_answers_429_past_max_pending(queue: Queue, settings: Settings, redis: Redis) -> None:
    limited = settings.replace(max_pending=3)
    async with api_client(Queue(redis, limited), limited) as client:
        assert [(await post(client, {"type": "noop"}))[0] for _ in range(3)] == [202, 202, 202]
        resp = await client.post("/task", json={"type": "noop"})
        assert resp.status == 429 and resp.headers["Retry-After"] == "1"
        assert "limit of 3" in (await resp.json())["error"]
        assert await redis.llen(queue.keys.pending) == 3
        await queue.claim("w", 1)
        assert (await post(client, {"type": "noop"}))[0] == 202


async def test_replicated_durability_waits_for_a_replica_and_says_so(aof_redis: RedisServer, queue_name: str,
                                                                     tmp_path: Path) -> None:
    settings = Settings(redis_url=aof_redis.url, queue=queue_name, replication_timeout=0.2)
    redis = connect(aof_redis.url)
    try:
        async with api_client(Queue(redis, settings), settings) as client:
            status, body = await post(client, {"type": "noop", "durability": "replicated"})
            assert status == 503 and body["durability"] == "memory" and "replica" in body["error"]
            assert (await Queue(redis, settings).get(body["task_id"]))["state"] == "pending"  # on the primary
            await redis.config_set("repl-diskless-sync-delay", 0)  # sync the replica now, not in 5 s
            replica = RedisServer(tmp_path / "replica", aof=False,
                                  extra=("--replicaof", "127.0.0.1", str(aof_redis.port))).start()
            try:
                await eventually(lambda: _replica_online(redis), what="replica in sync")
                patient = settings.replace(replication_timeout=5.0)  # a busy machine is slow to ack
                async with api_client(Queue(redis, patient), patient) as client2:
                    status, body = await post(client2, {"type": "noop", "durability": "replicated"})
                    assert (status, body["durability"]) == (202, "replicated")
                    status, body = await post(client2, {"type": "noop"})
                    assert (status, body["durability"]) == (202, "memory")
            finally:
                replica.stop()
    finally:
        await redis.aclose()


async def _replica_online(redis: Redis) -> bool:
    info = await redis.info("replication")
    return bool(info.get("connected_slaves")) and info.get("slave0", {}).get("state") == "online"


async def test_a_token_guards_every_endpoint_but_the_probes(queue: Queue, settings: Settings) -> None:
    guarded = settings.replace(api_token="s3cret")
    async with api_client(queue, guarded) as client:
        for method, path in (("POST", "/task"), ("POST", "/tasks"), ("GET", "/task/x"), ("DELETE", "/task/x"),
                             ("GET", "/openapi.json")):
            resp = await client.request(method, path, json={"type": "noop"})
            assert resp.status == 401, path
            resp = await client.request(method, path, json={"type": "noop"},
                                        headers={"Authorization": "Bearer wrong"})
            assert resp.status == 401, path
        resp = await client.post("/task", json={"type": "noop"}, headers={"Authorization": "Bearer s3cret"})
        assert resp.status == 202
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200


def test_no_token_no_listening_beyond_loopback_unless_insecure() -> None:
    check_exposure(Settings(host="127.0.0.1"))
    check_exposure(Settings(host="::1"))
    check_exposure(Settings(host="0.0.0.0", api_token="t"))
    check_exposure(Settings(host="0.0.0.0", insecure=True))
    with pytest.raises(ConfigError, match="RELIQ_API_TOKEN"):
        check_exposure(Settings(host="0.0.0.0"))
    result = subprocess.run([sys.executable, "-m", "reliq", "serve", "--host", "0.0.0.0", "--port", "1"],
                            capture_output=True, text=True, timeout=30, cwd=procs.ROOT)
    assert result.returncode == 2 and "--insecure" in result.stderr


async def test_startup_check_names_each_risk(aof_redis: RedisServer, redis_url: str) -> None:
    redis = connect(aof_redis.url)
    try:
        assert await redis_risks(redis) == []
        await redis.config_set("maxmemory-policy", "allkeys-lru")
        await redis.config_set("appendonly", "no")
        risks = await redis_risks(redis)
        assert len(risks) == 2
        assert "allkeys-lru" in risks[0] and "noeviction" in risks[0]
        assert "AOF off" in risks[1]
    finally:
        await redis.aclose()
