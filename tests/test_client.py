"""The blocking Client: shared by threads, safe across fork(), one round trip a call, no duplicates."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

import reliq.ids
from reliq import Client
from reliq.errors import QueueFull
from reliq.keys import QueueKeys
from reliq.queue import make_spec
from reliq.redis_server import RedisServer, free_port
from reliq.settings import Settings
from reliq.syncqueue import SyncQueue
from reliq.syncredis import SyncRedis
from tests.util import stored_payload


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain sync client of the session's server, for reading back what the Client wrote."""
    client = redis.Redis.from_url(redis_url)
    client.ping()  # connected before anything is counted
    yield client
    client.close()


def connections_opened(raw: redis.Redis) -> int:
    """How many connections the server has accepted since it started."""
    return int(raw.info("stats")["total_connections_received"])


def pending(raw: redis.Redis, queue: str) -> list[str]:
    return [i.decode() for i in raw.lrange(QueueKeys(queue).pending, 0, -1)]


def in_child(job: object, timeout_s: int = 10) -> str:
    """Run ``job()`` in a forked child under an alarm; return what it wrote, or fail.

    The child never returns into pytest: it exits with os._exit whatever happens.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        code = 1
        try:
            os.close(read_fd)
            signal.alarm(timeout_s)  # a hang kills the child instead of the test run
            os.write(write_fd, str(job()).encode())  # type: ignore[operator]
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + timeout_s + 5
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung")
        time.sleep(0.01)
    with os.fdopen(read_fd, "rb") as f:
        out = f.read().decode()
    assert os.waitstatus_to_exitcode(status) == 0, f"child failed (status {status}): {out!r}"
    return out


def test_a_child_forked_after_first_use_enqueues_on_its_own_connection(
    redis_url: str, queue_name: str, raw: redis.Redis
) -> None:
    client = Client(redis_url, queue_name)
    before = client.enqueue("noop", "parent, before the fork")  # the connection is open now
    opened = connections_opened(raw)
    child = in_child(lambda: client.enqueue("noop", "child"))
    # The child opened a connection of its own and left the parent's alone: the parent's
    # next call goes out on the connection it already had.
    assert connections_opened(raw) == opened + 1
    after = client.enqueue("noop", "parent, after the fork")
    assert connections_opened(raw) == opened + 1
    assert pending(raw, queue_name) == [after, child, before]
    assert [client.get(i)["payload"] for i in (before, child, after)] == [
        "parent, before the fork", "child", "parent, after the fork"]
    client.close()


def test_forks_while_other_threads_enqueue_never_hang_a_child(
    redis_url: str, queue_name: str, raw: redis.Redis
) -> None:
    # Threads in the middle of calls (holding connections, the id generator's lock) at
    # the moment of each fork: every child must still enqueue at once.
    client = Client(redis_url, queue_name)
    stop = threading.Event()
    sent: list[str] = []

    def hammer() -> None:
        while not stop.is_set():
            sent.append(client.enqueue("noop", "thread"))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        children = [in_child(lambda: client.enqueue("noop", "child")) for _ in range(8)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    ids = pending(raw, queue_name)
    assert Counter(ids) == Counter(sent + children)
    assert len(set(children)) == 8 and max(Counter(ids).values()) == 1
    assert {client.get(i)["payload"] for i in children} == {"child"}
    client.close()


def test_a_child_forked_while_a_parent_thread_holds_the_locks_never_waits_for_them(
    redis_url: str, queue_name: str, raw: redis.Redis
) -> None:
    # redis-py's pool, reused in a child, would reset itself under its lock: held by a
    # thread that does not exist in the child, it would never be released. Neither it
    # nor the id generator's lock may stand in a child's way.
    client = Client(redis_url, queue_name)
    before = client.enqueue("noop", "before")
    client.get(before)  # redis-py's own pool is in use too
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with client.redis.client.connection_pool._lock, reliq.ids._lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    try:
        child = in_child(lambda: client.get(before)["payload"] + "," + client.enqueue("noop", "child"))
    finally:
        release.set()
        holder.join()
    payload, child_id = child.split(",")
    assert payload == "before"
    assert pending(raw, queue_name) == [child_id, before]
    client.close()


def test_sixteen_threads_share_one_client_and_every_task_lands_once(
    redis_url: str, queue_name: str, raw: redis.Redis
) -> None:
    client = Client(redis_url, queue_name)
    per_thread = 150
    results: dict[int, list[str]] = {}
    opened = connections_opened(raw)

    def produce(n: int) -> None:
        results[n] = [client.enqueue("noop", [n, i]) for i in range(per_thread)]

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [task_id for n in range(16) for task_id in results[n]]
    assert len(ids) == len(set(ids)) == 16 * per_thread
    assert Counter(pending(raw, queue_name)) == Counter(ids)  # each id once, nothing else
    k = QueueKeys(queue_name)
    with raw.pipeline(transaction=False) as pipe:
        for task_id in ids:
            pipe.hgetall(k.task(task_id))
        payloads = [stored_payload(fields) for fields in pipe.execute()]
    assert [orjson.loads(p) for p in payloads] == [[n, i] for n in range(16) for i in range(per_thread)]
    assert connections_opened(raw) - opened <= 16  # at most one connection a thread
    client.close()


def test_a_connection_the_server_closed_is_replaced_without_a_duplicate(
    redis_url: str, queue_name: str, raw: redis.Redis
) -> None:
    client = Client(redis_url, queue_name)
    first = client.enqueue("noop")
    raw.client_kill_filter(_type="normal", skipme=True)  # the Client's idle connection is gone
    raw.script_flush()  # and the scripts, as after a restart: NOSCRIPT, then loaded again
    second = client.enqueue("noop")
    assert pending(raw, queue_name) == [second, first]
    client.close()


def test_a_call_redis_does_not_answer_in_time_raises_and_is_not_sent_again(tmp_path: Path) -> None:
    # The server has the command and runs it once it wakes up: sending it again on a
    # new connection would enqueue the task twice.
    server = RedisServer(tmp_path / "redis", aof=False).start()
    try:
        conn = SyncRedis(server.url, timeout=0.3)
        queue = SyncQueue(conn, Settings(), "q")
        queue.enqueue_specs([make_spec("noop", "before")])  # connected, script loaded
        server.signal(signal.SIGSTOP)
        started = time.monotonic()
        try:
            with pytest.raises(redis.TimeoutError):
                queue.enqueue_specs([make_spec("noop", "late")])
            assert time.monotonic() - started < 2
        finally:
            server.signal(signal.SIGCONT)
        with redis.Redis.from_url(server.url) as raw:
            ids = pending(raw, "q")
            assert [stored_payload(raw.hgetall(QueueKeys("q").task(i))) for i in ids] == [b'"late"', b'"before"']
        conn.close()
    finally:
        server.stop()


def test_a_full_queue_refuses_and_writes_nothing(redis_url: str, queue_name: str, raw: redis.Redis) -> None:
    client = Client(redis_url, queue_name, Settings(max_pending=1))
    only = client.enqueue("noop")
    with pytest.raises(QueueFull):
        client.enqueue("noop")
    assert pending(raw, queue_name) == [only]
    client.close()


def test_redis_down_raises_at_once_instead_of_hanging() -> None:
    client = Client(f"redis://127.0.0.1:{free_port()}/0", "q")
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.enqueue("noop")
    assert time.monotonic() - started < 5
