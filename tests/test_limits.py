"""Flow limits as configuration (issue 14 §1, §2): parsing, the layers, PUT/GET/DELETE /limits, ``reliq limit``.

What the limits do to claims is tested in tests/test_flow.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from redis.asyncio import Redis

import reliq
import reliq.producer
from reliq import priorities
from reliq.cli import main
from reliq.client import AsyncClient, Client
from reliq.errors import InvalidTask
from reliq.limits import Rate, declared, layer
from reliq.monitor import app as monitor
from reliq.queue import Queue
from reliq.registry import Registry
from reliq.settings import Settings
from tests.util import api_client


@reliq.task("webhook")
def webhook(payload: int) -> None:
    """A handler whose TaskFunction enqueues with a key."""


@pytest.fixture
async def client(queue: Queue, settings: Settings) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(monitor.create_app(queue, settings))) as c:
        yield c


@pytest.mark.parametrize(("text", "rate", "shown"), [
    ("100/s", Rate(100, 1000), "100/s"),
    ("100/s burst 1", Rate(100, 1000, 1), "100/s burst 1"),
    ("6/m", Rate(6, 60_000), "6/m"),
    ("6/min", Rate(6, 60_000), "6/m"),
    ("1000/h", Rate(1000, 3_600_000), "1000/h"),
    ("5/10s", Rate(5, 10_000), "5/10s"),
    ("5 / 90 seconds", Rate(5, 90_000), "5/90s"),
    ("100/s burst 20", Rate(100, 1000, 20), "100/s burst 20"),
    ("1/day", Rate(1, 86_400_000), "1/d"),
    ("30/60s", Rate(30, 60_000), "30/m"),
])
def test_rates_parse_and_print_back(text: str, rate: Rate, shown: str) -> None:
    assert Rate.parse(text) == rate
    assert rate.text() == shown
    assert Rate.parse(shown) == rate


@pytest.mark.parametrize("text", ["", "100", "100/", "/s", "100/x", "0/s", "100/0s", "100/s burst 0",
                                  "100/2d", "100/s burst", "-1/s", "1.5/s", 100, None, "100/s, burst 2"])
def test_bad_rates_say_what_a_rate_is(text: object) -> None:
    with pytest.raises(InvalidTask):
        Rate.parse(text)


def test_layers_check_their_fields() -> None:
    assert layer({"rate": "10/s"}) == {"rate": [10, 1000, 0]}
    assert layer({"rate": None, "key_concurrency": None}) == {"rate": None, "key_concurrency": None}
    assert layer({"key_concurrency": 1, "ordered": True}) == {"key_concurrency": 1, "ordered": True}
    for bad in ({}, [], {"rat": "1/s"}, {"key_concurrency": 0}, {"key_concurrency": True},
                {"key_concurrency": "2"}, {"ordered": "yes"}):
        with pytest.raises(InvalidTask):
            layer(bad)


def test_the_decorator_refuses_impossible_limits_at_import() -> None:
    assert declared(None, None, False) is None
    assert declared("50/s", 2, False) == {"rate": [50, 1000, 0], "key_concurrency": 2}
    with pytest.raises(ValueError, match="ordered"):
        declared(None, 2, True)
    with pytest.raises(ValueError, match="rate"):
        declared("fast", None, False)


async def test_put_get_delete_limits_over_http_with_the_declared_layer_beneath(
    client: TestClient, queue: Queue, redis: Redis  # type: ignore[type-arg]
) -> None:
    # A worker declared 50/s and key concurrency 2 (what @reliq.task(...) writes at start-up).
    registry = Registry()
    registry.add("send-email", lambda p: None, limits=declared("50/s", 2, False))
    registry.add("plain", lambda p: None)
    assert await queue.write_limits("declared", registry.declared_limits()) == 1
    resp = await client.get("/limits")
    assert resp.status == 200
    body = await resp.json()
    assert body["queue"] == queue.name
    assert set(body["types"]) == {"send-email"}
    email = body["types"]["send-email"]
    assert (email["rate"], email["key_concurrency"], email["ordered"]) == ("50/s", 2, False)
    assert email["declared"] == {"rate": "50/s", "key_concurrency": 2} and email["set"] == {}
    assert await redis.hget(queue.keys.limits, "send-email") == b"50|1000|0|2|0"

    # An operator raises the rate: the key concurrency stays as declared.
    resp = await client.put("/limits/send-email", json={"rate": "100/s burst 10"})
    assert resp.status == 200, await resp.text()
    view = (await resp.json())["limits"]
    assert (view["rate"], view["rate_per_s"], view["key_concurrency"]) == ("100/s burst 10", 100.0, 2)
    assert await redis.hget(queue.keys.limits, "send-email") == b"100|1000|10|2|0"
    # null switches the declared key concurrency off; ordered with it would be refused.
    resp = await client.put("/limits/send-email", json={"key_concurrency": None})
    assert (await resp.json())["limits"]["key_concurrency"] is None
    assert await redis.hget(queue.keys.limits, "send-email") == b"100|1000|10|0|0"
    resp = await client.put("/limits/send-email", json={"ordered": True})
    assert resp.status == 400 and "key_concurrency" in (await resp.json())["error"]
    resp = await client.put("/limits/send-email", json={"key_concurrency": 1, "ordered": True})
    assert (await resp.json())["limits"]["ordered"] is True
    assert await redis.hget(queue.keys.limits, "send-email") == b"100|1000|10|1|1"

    # A worker restarting with the same code leaves the operator's layer alone.
    await queue.write_limits("declared", registry.declared_limits())
    assert (await queue.limits())["send-email"]["rate"] == "100/s burst 10"

    resp = await client.delete("/limits/send-email")
    assert resp.status == 200
    view = (await resp.json())["limits"]
    assert (view["rate"], view["key_concurrency"], view["ordered"], view["set"]) == ("50/s", 2, False, {})
    assert await redis.hget(queue.keys.limits, "send-email") == b"50|1000|0|2|0"

    # New code without the declaration clears it, and with it the last limit: no hash is left.
    registry.add("send-email", lambda p: None)
    await queue.write_limits("declared", registry.declared_limits())
    assert (await (await client.get("/limits")).json())["types"] == {}
    assert not await redis.exists(queue.keys.limits, queue.keys.limit_sources)


async def test_bad_limit_requests_are_400s_that_write_nothing(
    client: TestClient, queue: Queue, redis: Redis  # type: ignore[type-arg]
) -> None:
    for body in ({"rate": "lots"}, {"key_concurrency": -1}, {"speed": 1}, {}, {"ordered": True}):
        resp = await client.put("/limits/t", json=body)
        assert resp.status == 400, body
        assert "error" in await resp.json()
    resp = await client.put("/limits/t", data=b"[1]", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    resp = await client.put("/limits/*", json={"rate": "1/s"})
    assert resp.status == 400
    resp = await client.get("/limits?queue=nope")
    assert resp.status == 404
    assert not await redis.exists(queue.keys.limits, queue.keys.limit_sources)


def test_reliq_limit_set_show_clear(settings: Settings, redis_url: str) -> None:
    runner = CliRunner()
    base = ["--redis-url", redis_url, "--queue", settings.queue]
    result = runner.invoke(main, ["limit", "set", "send-email", "--rate", "10/m burst 3", "--key-concurrency", "1",
                                  "--ordered", *base])
    assert result.exit_code == 0, result.output
    assert "rate 10/m burst 3, key concurrency 1, ordered" in result.output
    result = runner.invoke(main, ["limit", "show", "--json", *base])
    assert result.exit_code == 0, result.output
    assert '"rate": "10/m burst 3"' in result.output
    result = runner.invoke(main, ["limit", "show", *base])
    assert "send-email" in result.output and "10/m burst 3" in result.output
    result = runner.invoke(main, ["limit", "set", "send-email", "--key-concurrency", "off", *base])
    assert result.exit_code == 2 and "nothing was changed" in result.output  # ordered needs 1
    result = runner.invoke(main, ["limit", "set", "send-email", "--rate", "off", "--no-ordered",
                                  "--key-concurrency", "off", *base])
    assert result.exit_code == 0, result.output
    assert "no rate limit, no key concurrency bound" in result.output
    for bad in (["--rate", "soon"], ["--key-concurrency", "two"], []):
        result = runner.invoke(main, ["limit", "set", "send-email", *bad, *base])
        assert result.exit_code == 2, (bad, result.output)
    result = runner.invoke(main, ["limit", "clear", "send-email", *base])
    assert result.exit_code == 0 and "cleared" in result.output
    result = runner.invoke(main, ["limit", "show", *base])
    assert "no task type" in result.output


async def test_every_producer_gives_a_task_its_key_and_a_bad_key_is_a_400_that_writes_nothing(
    queue: Queue, settings: Settings, redis_url: str, redis: Redis
) -> None:
    async with api_client(queue, settings) as http:
        resp = await http.post("/task", json={"type": "webhook", "payload": 1, "key": "customer-42"})
        assert resp.status == 202, await resp.text()
        by_api = (await resp.json())["task_id"]
        for bad in ("", "a\nb", "x" * 201, 42):
            resp = await http.post("/task", json={"type": "webhook", "key": bad})
            assert resp.status == 400, bad
            assert "'key'" in (await resp.json())["error"]
    with Client(redis_url, queue.name) as sync:
        by_client = sync.enqueue("webhook", 2, key="customer-42")
    by_async = await AsyncClient(redis_url, queue.name).enqueue("webhook", 3, key="customer-7")
    reliq.configure(redis_url, queue.name)
    try:
        by_function = await asyncio.to_thread(webhook.enqueue, 4, key="customer-7")
    finally:
        reliq.producer.close()
    for task_id, key in ((by_api, "customer-42"), (by_client, "customer-42"), (by_async, "customer-7"),
                         (by_function, "customer-7")):
        record = await queue.get(task_id)
        assert (record["key"], record["state"]) == (key, "pending")
    snap = await queue.snapshot()
    assert (snap["pending"], snap["keyed"]) == (4, 4)
    assert await redis.lrange(queue.keys.pending, 0, -1) == [priorities.WAKE.encode()]  # keyed: in keys' lists
    # (and the first woke the workers blocked on pending with a token, not counted in pending)
    assert await redis.llen(queue.keys.group("webhook", "customer-42")) == 2
