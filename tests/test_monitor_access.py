"""Who may read and write the monitor: loopback or not, write and read tokens, public reads and metrics."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from reliq.errors import ConfigError
from reliq.queue import Queue
from reliq.redis_server import answers, free_port
from reliq.settings import Settings
from tests.procs import ROOT, stop
from tests.test_monitor import client_for, make_dead
from tests.util import wait_until

assert client_for  # the fixture, shared with the monitor's tests
WRITE, READ = "wr1te-token", "re4d-token"
#: What a request carries: nothing, a wrong token, the read token, the write token.
HEADERS = {"none": {}, "wrong": {"Authorization": "Bearer nope"},
           "read": {"Authorization": f"Bearer {READ}"}, "write": {"Authorization": f"Bearer {WRITE}"}}
READS = ("/stats", "/dead", "/workers", "/history", "/jobs", "/queues", "/tasks")


def expected_read(host: str, flags: dict[str, bool], who: str, path: str = "/stats") -> int:
    """The rule of docs/monitor.md, spelled out independently of the code under test."""
    if who in ("read", "write"):
        return 200
    if path == "/metrics" and flags.get("public_metrics"):
        return 200
    if flags.get("private"):
        return 401
    return 200 if host == "127.0.0.1" or flags.get("public_read") else 401


CONFIGS = [
    ("127.0.0.1", {}),
    ("127.0.0.1", {"private": True}),
    ("0.0.0.0", {}),
    ("0.0.0.0", {"public_read": True}),
    ("0.0.0.0", {"public_metrics": True}),
    ("192.0.2.10", {"public_read": True, "public_metrics": True}),
]


@pytest.mark.parametrize(("host", "flags"), CONFIGS)
async def test_reads_and_writes_need_what_the_configuration_says(
    client_for: Any, queue: Queue, settings: Settings, host: str, flags: dict[str, bool]
) -> None:
    ids = await make_dead(queue, settings)
    configured = settings.replace(host=host, api_token=WRITE, read_token=READ, **flags)
    client: TestClient = await client_for(queue, configured)
    dead_one = ids["fail"][0]
    for who, headers in HEADERS.items():
        for path in (*READS, f"/dead/{dead_one}", "/metrics"):
            resp = await client.get(path, headers=headers)
            assert resp.status == expected_read(host, flags, who, path), (who, path)
            if resp.status == 401:
                assert resp.headers["WWW-Authenticate"] == "Bearer"
        # The page and its files hold no data: always open, so a browser can ask for the token.
        for path in ("/", "/static/app.js", "/healthz"):
            assert (await client.get(path, headers=headers)).status == 200, (who, path)
        # Writes: the write token only; a known read token is forbidden (403), anything else 401.
        write = await client.post(f"/dead/{dead_one}/requeue", headers=headers)
        assert write.status == {"write": 200, "read": 403}.get(who, 401), who  # "write" comes last
    assert (await queue.get(dead_one))["state"] == "pending"


async def test_the_event_stream_needs_a_token_beyond_loopback(client_for: Any, queue: Queue,
                                                                settings: Settings) -> None:
    client: TestClient = await client_for(queue, settings.replace(host="0.0.0.0", api_token=WRITE,
                                                                  read_token=READ))
    assert (await client.get("/events")).status == 401
    resp = await client.get("/events", headers=HEADERS["read"])
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    resp.close()


def test_settings_refuse_contradictory_access() -> None:
    with pytest.raises(ConfigError, match="RELIQ_API_TOKEN"):
        Settings(read_token=READ).check()
    with pytest.raises(ConfigError, match="differ"):
        Settings(api_token=WRITE, read_token=WRITE).check()
    with pytest.raises(ConfigError, match="contradict"):
        Settings(api_token=WRITE, private=True, public_read=True).check()


def test_a_monitor_bound_to_every_address_hides_payloads_without_a_token(redis_url: str, queue_name: str,
                                                                          tmp_path: Any) -> None:
    """A real ``reliq monitor --host 0.0.0.0``: the setting, the flags and the environment end to end."""
    port = free_port()
    env = {**os.environ, "RELIQ_API_TOKEN": WRITE, "RELIQ_READ_TOKEN": READ}
    log = tmp_path / "monitor.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "reliq", "monitor", "--redis-url", redis_url, "--queue",
                                 queue_name, "--host", "0.0.0.0", "--port", str(port), "--public-metrics"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: answers("127.0.0.1", port) or proc.poll() is not None, timeout=30,
                   what="monitor listening")
        assert proc.poll() is None, log.read_text()

        async def check() -> None:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
                for path in ("/dead", "/stats", "/dead/x"):
                    async with http.get(path) as resp:
                        assert resp.status == 401, path
                async with http.get("/dead", headers=HEADERS["read"]) as resp:
                    assert resp.status == 200
                async with http.get("/metrics") as resp:
                    assert resp.status == 200 and "reliq_queue_depth" in await resp.text()
                async with http.delete("/dead", headers=HEADERS["read"]) as resp:
                    assert resp.status == 403
                async with http.delete("/dead", headers=HEADERS["write"]) as resp:
                    assert resp.status == 200

        asyncio.run(check())
    finally:
        stop(proc)
