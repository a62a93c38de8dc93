"""The monitor's JSON endpoints, the sampler, access control and the dlq/stats CLI."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from reliq import builtins
from reliq.cli import main as cli
from reliq.connection import connect
from reliq.monitor import app as monitor
from reliq.monitor.sampler import Sampler
from reliq.queue import Queue
from reliq.settings import Settings
from reliq.worker import Worker
from tests.util import eventually

assert builtins  # registers noop, fail, email-notification
TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def run_burst(queue: Queue, settings: Settings) -> None:
    """Run everything pending with an in-process worker, then return."""
    await Worker(queue, settings, burst=True).run()


async def make_dead(queue: Queue, settings: Settings) -> dict[str, list[str]]:
    """Dead tasks of three kinds: fail (error), nope (unknown_type), bad email (permanent)."""
    ids = {
        "fail": [await queue.enqueue("fail", i, max_retries=0) for i in range(3)],
        "nope": [await queue.enqueue("nope", i) for i in range(2)],
        "email-notification": [await queue.enqueue("email-notification", "not-an-address")],
    }
    await run_burst(queue, settings)
    return ids


@pytest.fixture
async def client_for() -> AsyncIterator[Any]:
    """Build monitor test clients for given settings; all closed at the end."""
    clients: list[TestClient] = []

    async def make(queue: Queue, settings: Settings) -> TestClient:
        client = TestClient(TestServer(monitor.create_app(queue, settings)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
async def http(client_for: Any, queue: Queue, settings: Settings) -> TestClient:
    """A monitor without a token."""
    client: TestClient = await client_for(queue, settings)
    return client


@pytest.fixture
async def guarded(client_for: Any, queue: Queue, settings: Settings) -> TestClient:
    """A monitor with a token (mutations need it, reads are open)."""
    client: TestClient = await client_for(queue, settings.replace(api_token=TOKEN))
    return client


# -- reading ----------------------------------------------------------------------------------


async def test_stats_reports_depths_lag_counters_rates_and_latency(http: TestClient, queue: Queue,
                                                                   settings: Settings) -> None:
    await queue.enqueue("noop", 1)
    resp = await http.get("/stats")
    body = await resp.json()
    assert resp.status == 200
    assert body["pending"] == 1 and body["enqueued"] == 1 and body["dead_letter"] == 0
    assert body["lag_s"] >= 0 and set(body["rates"]) == {"enqueued", "succeeded", "failed", "dead"}
    assert set(body["latency"]) >= {"wait", "run", "window_s"}


async def test_sampler_turns_counter_deltas_into_rates_history_and_latency(queue: Queue,
                                                                          settings: Settings) -> None:
    sampler = Sampler(queue)
    await sampler.sample_once()
    for i in range(20):
        await queue.enqueue("noop", i)
    await run_burst(queue, settings)
    await asyncio.sleep(0.05)
    await sampler.sample_once()
    rates = sampler.rates()
    assert rates["succeeded"] > 0 and rates["enqueued"] > 0 and rates["failed"] == 0
    points = sampler.history()["points"]
    assert len(points) == 2 and points[1][5] > 0  # succeeded/s of the second point
    latency = sampler.latency()
    assert latency["run"]["count"] == 20 and latency["wait"]["count"] == 20
    assert latency["run"]["p50"] is not None and latency["run"]["p50"] <= latency["run"]["p99"]


async def test_sampler_reports_each_task_type_with_its_failure_ratio(queue: Queue, settings: Settings) -> None:
    sampler = Sampler(queue)
    await sampler.sample_once()
    for i in range(6):
        await queue.enqueue("noop", i)
    for i in range(2):
        await queue.enqueue("fail", i, max_retries=0)
    await run_burst(queue, settings)
    await asyncio.sleep(0.05)
    await sampler.sample_once()
    noop, fail = sampler.types()  # the busiest first
    assert noop["type"] == "noop" and noop["runs_total"] == 6 and noop["failure_ratio"] == 0
    assert noop["succeeded_s"] > 0 and noop["failed_s"] == 0 and noop["run"]["count"] == 6
    assert fail["type"] == "fail" and fail["failure_ratio"] == 1 and fail["failed_total"] == 2


async def test_history_and_events_stream_a_sample_every_second(http: TestClient, queue: Queue) -> None:
    await queue.enqueue("noop", None)
    resp = await http.get("/events")
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    started = time.monotonic()
    samples: list[dict[str, Any]] = []
    buffer = b""
    while len(samples) < 2 or samples[-1]["stats"]["pending"] != 1:
        buffer += await asyncio.wait_for(resp.content.readany(), 5)
        while b"\n\n" in buffer:
            message, buffer = buffer.split(b"\n\n", 1)
            for line in message.splitlines():
                if line.startswith(b"data: "):
                    samples.append(orjson.loads(line[6:]))
    assert time.monotonic() - started < 4
    assert [s["seq"] for s in samples] == sorted({s["seq"] for s in samples})
    resp.close()
    history = await (await http.get("/history")).json()
    assert history["fields"][0] == "t" and len(history["points"]) >= 1


async def test_workers_lists_live_workers_with_heartbeat_age(http: TestClient, queue: Queue, redis_url: str,
                                                            settings: Settings) -> None:
    redis = connect(redis_url, max_connections=8)
    worker = Worker(Queue(redis, settings), settings)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        async def listed() -> bool:
            found = (await (await http.get("/workers")).json())["workers"]
            return [w["id"] for w in found] == [worker.id]

        await eventually(listed, what="worker listed")
        [w] = (await (await http.get("/workers")).json())["workers"]
        assert w["concurrency"] == settings.concurrency and w["heartbeat_age_s"] < settings.lease
        assert w["pid"] > 0 and w["host"]
    finally:
        stop.set()
        await task
        await redis.aclose()


async def test_the_page_and_its_files_are_served_by_reliq_itself(http: TestClient) -> None:
    resp = await http.get("/")
    html = await resp.text()
    assert resp.status == 200 and "default-src 'self'" in resp.headers["Content-Security-Policy"]
    for asset in ("static/app.js", "static/app.css", "static/favicon.svg"):
        assert asset in html
        assert (await http.get("/" + asset)).status == 200
    assert "http://" not in html and "https://" not in html


# -- dead letters ----------------------------------------------------------------------------


async def test_dead_list_pages_newest_first_and_filters_by_type_and_reason(
    http: TestClient, queue: Queue, settings: Settings
) -> None:
    ids = await make_dead(queue, settings)
    everything = await (await http.get("/dead?limit=4")).json()
    assert everything["total"] == 6 and len(everything["items"]) == 4
    newest_first = await queue.dead_ids()
    assert [i["task_id"] for i in everything["items"]] == newest_first[:4]
    second = await (await http.get("/dead?limit=4&offset=4")).json()
    assert [i["task_id"] for i in second["items"]] == newest_first[4:]

    fails = await (await http.get("/dead?type=fail&facets=1")).json()
    assert sorted(i["task_id"] for i in fails["items"]) == sorted(ids["fail"])
    assert fails["types"] == {"fail": 3, "nope": 2, "email-notification": 1}
    assert fails["reasons"] == {"error": 3, "unknown_type": 2, "permanent": 1}
    unknown = await (await http.get("/dead?reason=unknown_type")).json()
    assert sorted(i["task_id"] for i in unknown["items"]) == sorted(ids["nope"])
    assert unknown["items"][0]["last_error"]
    none = await (await http.get("/dead?type=fail&reason=permanent")).json()
    assert none["total"] == 0 and none["items"] == []


async def test_dead_show_returns_payload_and_error_or_404(http: TestClient, queue: Queue,
                                                        settings: Settings) -> None:
    ids = await make_dead(queue, settings)
    record = await (await http.get(f"/dead/{ids['fail'][1]}")).json()
    assert record["payload"] == 1 and "fail task always fails" in record["last_error"]
    assert record["reason"] == "error" and record["state"] == "dead"
    assert (await http.get("/dead/NOPE")).status == 404
    alive = await queue.enqueue("noop", None)
    assert (await http.get(f"/dead/{alive}")).status == 404


async def test_dead_kinds_reads_ids_types_and_reasons_in_chunks(queue: Queue, settings: Settings,
                                                                  redis: Any) -> None:
    ids = await make_dead(queue, settings)
    kinds = await queue.dead_kinds(0, 4) + await queue.dead_kinds(4, 4)
    assert [i for i, _, _ in kinds] == await queue.dead_ids()
    assert {(t, r) for _, t, r in kinds} == {("fail", "error"), ("nope", "unknown_type"),
                                             ("email-notification", "permanent")}
    await redis.delete(queue.keys.task(ids["fail"][0]))  # a record gone under our feet
    assert (ids["fail"][0], "", "") in await queue.dead_kinds()


@pytest.mark.parametrize("bad", ["/dead?limit=abc", "/dead?limit=0", "/dead?offset=-1", "/dead?limit=100000"])
async def test_dead_list_rejects_bad_paging_with_400(http: TestClient, bad: str) -> None:
    resp = await http.get(bad)
    assert resp.status == 400 and "must" in (await resp.json())["error"]


async def test_requeue_one_needs_the_token_and_sends_the_task_back(
    guarded: TestClient, queue: Queue, settings: Settings
) -> None:
    ids = await make_dead(queue, settings)
    target = ids["fail"][0]
    assert (await guarded.post(f"/dead/{target}/requeue")).status == 401
    assert (await queue.get(target))["state"] == "dead"
    resp = await guarded.post(f"/dead/{target}/requeue", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["requeued"] == 1
    info = await queue.get(target)
    assert info["state"] == "pending" and info["attempts"] == 0
    assert target not in await queue.dead_ids()
    assert (await guarded.post(f"/dead/{target}/requeue", headers=AUTH)).status == 404


async def test_delete_one_needs_the_token_and_removes_the_record(
    guarded: TestClient, queue: Queue, settings: Settings
) -> None:
    ids = await make_dead(queue, settings)
    target = ids["nope"][0]
    assert (await guarded.delete(f"/dead/{target}")).status == 401
    assert target in await queue.dead_ids()
    assert (await guarded.delete(f"/dead/{target}", headers=AUTH)).status == 200
    assert target not in await queue.dead_ids()
    assert (await guarded.get(f"/dead/{target}")).status == 404
    assert (await guarded.delete(f"/dead/{target}", headers=AUTH)).status == 404


async def wait_job(client: TestClient, job_id: str) -> dict[str, Any]:
    """Poll /jobs/{id} until the job is no longer running."""
    view: dict[str, Any] = {}

    async def finished() -> bool:
        nonlocal view
        view = await (await client.get(f"/jobs/{job_id}")).json()
        return bool(view["state"] != "running")

    await eventually(finished, what="requeue job finished")
    return view


async def test_requeue_many_filtered_runs_as_a_job_and_needs_the_token(
    guarded: TestClient, queue: Queue, settings: Settings
) -> None:
    ids = await make_dead(queue, settings)
    assert (await guarded.post("/dead/requeue", json={"type": "fail"})).status == 401
    resp = await guarded.post("/dead/requeue", json={"type": "fail"}, headers=AUTH)
    assert resp.status == 202 and resp.headers["Location"].startswith("jobs/")
    view = await wait_job(guarded, (await resp.json())["id"])
    assert view["state"] == "done" and view["total"] == 3 and view["requeued"] == 3
    assert sorted(await queue.dead_ids()) == sorted(ids["nope"] + ids["email-notification"])
    for task_id in ids["fail"]:
        assert (await queue.get(task_id))["state"] == "pending"
    jobs = (await (await guarded.get("/jobs")).json())["jobs"]
    assert [j["id"] for j in jobs] == [view["id"]]

    # Without a filter: everything left, given as query parameters this time.
    resp = await guarded.post("/dead/requeue?reason=", headers=AUTH)
    view = await wait_job(guarded, (await resp.json())["id"])
    assert view["requeued"] == 3 and await queue.dead_ids() == []


async def test_requeue_many_keeps_to_its_rate_and_can_be_stopped(
    guarded: TestClient, queue: Queue, settings: Settings
) -> None:
    ids = [await queue.enqueue("fail", i, max_retries=0) for i in range(10)]
    await run_burst(queue, settings)
    resp = await guarded.post("/dead/requeue", json={"rate": 40}, headers=AUTH)
    view = await wait_job(guarded, (await resp.json())["id"])
    # 10 tasks at 40/s in batches of 4: the last batch cannot leave before 8/40 s.
    assert view["requeued"] == 10 and view["finished_at"] - view["started_at"] >= 0.19
    assert sorted(await queue.dead_ids()) == []

    await run_burst(queue, settings)  # they fail again and are dead once more
    assert sorted(await queue.dead_ids()) == sorted(ids)
    resp = await guarded.post("/dead/requeue", json={"rate": 2}, headers=AUTH)
    job_id = (await resp.json())["id"]
    assert (await guarded.delete(f"/jobs/{job_id}")).status == 401
    assert (await guarded.delete(f"/jobs/{job_id}", headers=AUTH)).status == 200
    view = await wait_job(guarded, job_id)
    assert view["state"] == "cancelled" and view["requeued"] < 10, str(view)
    assert len(await queue.dead_ids()) == 10 - view["requeued"]


@pytest.mark.parametrize("body", [{"rate": -1}, {"rate": "fast"}, {"rate": True}, {"type": 3}, [1, 2]])
async def test_requeue_many_rejects_bad_options_with_400(guarded: TestClient, body: Any) -> None:
    resp = await guarded.post("/dead/requeue", json=body, headers=AUTH)
    assert resp.status == 400, await resp.text()
    assert (await (await guarded.get("/jobs")).json())["jobs"] == []


async def test_requeue_many_rejects_a_body_that_is_not_json(guarded: TestClient) -> None:
    resp = await guarded.post("/dead/requeue", data=b"{nope", headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 400 and "JSON" in (await resp.json())["error"]


async def test_purge_needs_the_token_and_deletes_matching_or_all(
    guarded: TestClient, queue: Queue, settings: Settings
) -> None:
    ids = await make_dead(queue, settings)
    assert (await guarded.delete("/dead")).status == 401
    assert len(await queue.dead_ids()) == 6
    resp = await guarded.delete("/dead?type=nope", headers=AUTH)
    assert (await resp.json())["deleted"] == 2
    assert sorted(await queue.dead_ids()) == sorted(ids["fail"] + ids["email-notification"])
    resp = await guarded.delete("/dead", headers=AUTH)
    assert (await resp.json())["deleted"] == 4 and await queue.dead_ids() == []
    for task_id in ids["fail"]:
        assert (await guarded.get(f"/dead/{task_id}")).status == 404


async def test_reads_stay_open_with_a_token_but_not_when_private(
    client_for: Any, guarded: TestClient, queue: Queue, settings: Settings
) -> None:
    ids = await make_dead(queue, settings)
    reads = ["/stats", "/workers", "/dead", f"/dead/{ids['fail'][0]}", "/history", "/metrics", "/jobs"]
    for path in reads:
        assert (await guarded.get(path)).status == 200, path
    private = await client_for(queue, settings.replace(api_token=TOKEN, private=True))
    for path in [*reads, "/events"]:
        assert (await private.get(path)).status == 401, path
        assert (await private.get(path, headers=AUTH)).status == 200, path
    for path in ["/", "/static/app.js", "/healthz"]:
        assert (await private.get(path)).status == 200, path
    assert (await private.post(f"/dead/{ids['fail'][0]}/requeue")).status == 401


async def test_one_monitor_watches_every_configured_queue(client_for: Any, redis: Any, queue: Queue,
                                                          settings: Settings) -> None:
    other_name = settings.queue + "-low"
    multi = settings.replace(queues=(settings.queue, other_name))
    other = Queue(redis, multi, other_name)
    client = await client_for(queue, multi)
    assert (await (await client.get("/queues")).json())["queues"] == [settings.queue, other_name]
    ids = await make_dead(other, multi)
    await other.enqueue("noop", None)
    assert (await (await client.get("/stats")).json())["pending"] == 0  # the first queue by default
    assert (await (await client.get(f"/stats?queue={other_name}")).json())["pending"] == 1
    assert (await (await client.get(f"/dead?queue={other_name}")).json())["total"] == 6
    assert (await (await client.get("/dead")).json())["total"] == 0
    resp = await client.post(f"/dead/{ids['fail'][0]}/requeue?queue={other_name}")
    assert resp.status == 200 and (await other.get(ids["fail"][0]))["state"] == "pending"
    unknown = await client.get("/stats?queue=nope")
    assert unknown.status == 404 and "does not watch" in (await unknown.json())["error"]
    text = await (await client.get("/metrics")).text()
    assert f'reliq_queue_depth{{queue="{other_name}",state="dead"}} 5.0' in text
    assert f'reliq_queue_depth{{queue="{settings.queue}",state="dead"}} 0.0' in text
    assert text.count("# HELP reliq_desired_workers") <= 1 and text.count("# HELP reliq_queue_depth") == 1


def test_private_without_a_token_is_refused() -> None:
    from reliq.errors import ConfigError

    with pytest.raises(ConfigError, match="token"):
        Settings(private=True).check()


async def test_redis_down_answers_503_and_the_stream_says_so(settings: Settings) -> None:
    from reliq.redis_server import free_port

    dead_settings = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    redis = connect(dead_settings.redis_url)
    client = TestClient(TestServer(monitor.create_app(Queue(redis, dead_settings), dead_settings)))
    await client.start_server()
    try:
        for path in ("/stats", "/dead", "/metrics", "/workers"):
            resp = await client.get(path)
            assert resp.status == 503 and resp.headers["Retry-After"], path
        resp = await client.get("/events")
        chunk = b""
        while b"data:" not in chunk:
            chunk += await asyncio.wait_for(resp.content.readany(), 5)
        assert b"Redis is unavailable" in chunk
        resp.close()
    finally:
        await client.close()
        await redis.aclose()


# -- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def dead_ids(redis_url: str, settings: Settings) -> Iterator[dict[str, list[str]]]:
    """Dead tasks made on a loop of their own (the CLI runs its own loop too)."""

    async def setup() -> dict[str, list[str]]:
        redis = connect(redis_url)
        try:
            return await make_dead(Queue(redis, settings), settings)
        finally:
            await redis.aclose()

    yield asyncio.run(setup())


def invoke(settings: Settings, *args: str, input: str | None = None) -> Any:
    """Run ``reliq <args> --redis-url ... --queue ...`` in-process."""
    opts = ["--redis-url", settings.redis_url, "--queue", settings.queue]
    return CliRunner().invoke(cli, [*args, *opts], input=input, catch_exceptions=False)


def test_cli_stats_and_dlq_list_show(settings: Settings, dead_ids: dict[str, list[str]]) -> None:
    result = invoke(settings, "stats", "--json")
    assert result.exit_code == 0 and orjson.loads(result.output)["dead_letter"] == 6
    assert "dead_letter" in invoke(settings, "stats").output
    listed = orjson.loads(invoke(settings, "dlq", "list", "--type", "fail", "--json").output)
    assert sorted(i["task_id"] for i in listed["items"]) == sorted(dead_ids["fail"])
    table = invoke(settings, "dlq", "list", "--per-page", "50")
    assert table.exit_code == 0 and all(i in table.output for i in dead_ids["nope"])
    shown = invoke(settings, "dlq", "show", dead_ids["fail"][0])
    assert orjson.loads(shown.output)["task_id"] == dead_ids["fail"][0]
    missing = invoke(settings, "dlq", "show", "NOPE")
    assert missing.exit_code == 1


def test_cli_dlq_requeue_and_purge_ask_first(settings: Settings, dead_ids: dict[str, list[str]]) -> None:
    assert invoke(settings, "dlq", "requeue").exit_code == 2  # names nothing: a usage error
    declined = invoke(settings, "dlq", "requeue", "--type", "fail", input="n\n")
    assert declined.exit_code == 1 and "Requeue 3 dead task(s)" in declined.output
    done = invoke(settings, "dlq", "requeue", "--type", "fail", "--rate", "100", input="y\n")
    assert done.exit_code == 0 and "requeued 3 task(s)" in done.output
    one = invoke(settings, "dlq", "requeue", dead_ids["nope"][0])
    assert one.exit_code == 0 and "requeued 1 of 1" in one.output
    assert invoke(settings, "dlq", "purge", dead_ids["nope"][1]).exit_code == 0
    declined = invoke(settings, "dlq", "purge", "--all", input="n\n")
    assert declined.exit_code == 1
    purged = invoke(settings, "dlq", "purge", "--all", "--yes")
    assert purged.exit_code == 0 and "deleted 1 task(s)" in purged.output
    assert orjson.loads(invoke(settings, "stats", "--json").output)["dead_letter"] == 0
