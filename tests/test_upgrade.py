"""Deploying this version onto a queue that the version before record format 2 serves, and then upgrading it.

The version before is main's commit ``cf3d433`` (:data:`OLD`): it reads and writes record
format 1 only, and a format 2 record fails its claim. These tests run it for real, from
its own tree (``git archive``, its own Lua scripts with it), beside this one: workers and
producers of both versions on one queue, retries that carry a record from one version's
worker to the other's, and ``reliq records upgrade`` (docs/architecture.md, "Record
formats across an upgrade").

Which worker runs a retry is forced, not left to chance: the worker that must not run it
is held with SIGSTOP (checked stopped, so it cannot claim between the check and the stop;
``--lease 30``, so nobody takes a held worker for dead). Every run of a handler appends a
line to a file (:data:`TASKS`): the task, its attempt, what it did, and the reliq package
and pid that ran it, so each task is seen to have succeeded exactly once, and where.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from reliq.keys import QueueKeys
from reliq.partitions import REFRESH_S
from reliq.redis_server import free_port
from tests import procs
from tests.util import wait_until

#: The last commit of the version before record format 2.
OLD = "cf3d433"
ROOT = procs.ROOT
TYPE = "upgrade.step"
END = {"succeeded", "dead", "cancelled"}
#: The fields of a succeeded record of format 1 (the old version's settle.lua: KEPT, and what it sets).
COMPACT_1 = {"type", "attempts", "failures", "crashes", "enqueued_at", "started_at", "priority", "runs", "state",
             "finished_at", "result"}

#: The task module both versions' workers load (``--app upgrade_tasks``). A payload says what
#: to do: ``fail_on``/``permanent_on`` (the sides, old or new, on which an attempt raises,
#: or dead-letters the task), ``fail_first`` (the first attempt raises, wherever it runs).
#: One second between attempts, whatever the attempt: the time the tests take to hold a
#: worker between a failure and its retry.
TASKS = '''
import asyncio
import json
import os
import time

import reliq

SIDE = "old" if os.path.realpath(reliq.__file__).startswith(os.environ["UPGRADE_OLD_TREE"]) else "new"


@reliq.task("upgrade.step", backoff=lambda failures: 1.0)
async def step(payload, ctx):
    if SIDE in payload.get("permanent_on", ()):
        did = "permanent"
    elif SIDE in payload.get("fail_on", ()) or (payload.get("fail_first") and ctx.attempt == 1):
        did = "fail"
    else:
        did = "ok"
    run = {"id": ctx.task_id, "attempt": ctx.attempt, "did": did, "side": SIDE, "pid": os.getpid(),
           "reliq": os.path.realpath(reliq.__file__), "at": time.time()}
    with open(os.environ["UPGRADE_RUNS"], "a") as f:
        f.write(json.dumps(run) + "\\n")
    await asyncio.sleep(payload.get("sleep", 0))
    if did == "permanent":
        raise reliq.PermanentError(f"gives up on {SIDE}")
    if did == "fail":
        raise RuntimeError(f"fails on {SIDE}, attempt {ctx.attempt}")
    return {"n": payload["n"], "side": SIDE}
'''

#: A producer of either version: ``reliq.Client``, reading a batch a line from stdin
#: (``{"tasks": [[type, payload, options], ...], "gap": seconds}``), enqueuing its tasks
#: one call each, ``gap`` apart (a stream), and answering the ids (or the error) in a line.
PRODUCER = '''
import json, sys, time
import reliq
client = reliq.Client(sys.argv[1], sys.argv[2])
print(json.dumps({"reliq": reliq.__file__}), flush=True)
for line in sys.stdin:
    batch = json.loads(line)
    try:
        ids = []
        for type, payload, options in batch["tasks"]:
            ids.append(client.enqueue(type, payload, **options))
            time.sleep(batch.get("gap", 0))
        print(json.dumps({"ids": ids}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": repr(exc)}), flush=True)
'''


@dataclass(frozen=True)
class Trees:
    """Where each version's reliq package is, and the task module both load."""

    old: Path  # holds the old reliq/
    apps: Path  # holds upgrade_tasks.py


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Trees:
    """The old version's tree, as its commit holds it (a clone without the history skips; CI fails)."""
    found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{OLD}^{{commit}}"], capture_output=True)
    if found.returncode != 0:
        why = (f"commit {OLD} (the version before record format 2) is not in {ROOT}'s history "
               f"(a shallow clone?): {found.stderr.decode().strip()}")
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    old = tmp_path_factory.mktemp("old")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD, "reliq"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    apps = tmp_path_factory.mktemp("apps")
    (apps / "upgrade_tasks.py").write_text(TASKS)
    return Trees(old.resolve(), apps)


@dataclass
class Worker:
    side: str
    proc: subprocess.Popen[bytes]
    id: str
    log: Path


@dataclass(eq=False)
class Producer:
    side: str
    proc: subprocess.Popen[str]

    def send(self, tasks: list[list[Any]], gap: float = 0.0) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"tasks": tasks, "gap": gap}) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> list[str]:
        assert self.proc.stdout is not None
        answer = json.loads(self.proc.stdout.readline() or '{"error": "the producer exited"}')
        assert "ids" in answer, f"{self.side} producer: {answer}"
        return list(answer["ids"])

    def enqueue(self, tasks: list[list[Any]], gap: float = 0.0) -> list[str]:
        self.send(tasks, gap)
        return self.receive()


@dataclass
class Fleet:
    """One queue, and the processes of both versions a test runs on it (all gone at its end)."""

    trees: Trees
    redis_url: str
    queue: str
    tmp: Path
    r: redis.Redis = field(init=False)
    keys: QueueKeys = field(init=False)
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)  # task id -> its payload

    def __post_init__(self) -> None:
        self.r = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self.keys = QueueKeys(self.queue)
        self.runs_file = self.tmp / "runs.jsonl"
        self.runs_file.touch()

    def env(self, side: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RELIQ_") and k not in ("REDIS_URL", "PYTHONPATH")}
        path = [str(self.trees.old)] if side == "old" else []
        return {**env, "PYTHONPATH": os.pathsep.join([*path, str(self.trees.apps)]),
                "UPGRADE_OLD_TREE": str(self.trees.old), "UPGRADE_RUNS": str(self.runs_file)}

    def cwd(self, side: str) -> Path:
        """The old version's processes start in its tree: the work tree's reliq/ comes first from the cwd."""
        return self.trees.old if side == "old" else ROOT

    def worker(self, side: str) -> Worker:
        """A ``reliq work`` of ``side``, returned once it has registered."""
        log = self.tmp / f"{side}-worker-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "reliq", "work", "--redis-url", self.redis_url, "--queue", self.queue,
                 "--app", "upgrade_tasks", "--concurrency", "4", "--lease", "30", "--heartbeat-interval", "0.5",
                 "--drain-timeout", "10"], cwd=self.cwd(side), env=self.env(side), stdout=out,
                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        found: list[str] = []

        def registered() -> bool:
            assert proc.poll() is None, log.read_text()
            found[:] = [w for w in map(str, self.r.zrange(self.keys.workers, 0, -1))
                        if self.r.hget(self.keys.worker_info(w), "pid") == str(proc.pid)]
            return bool(found)

        # a Python process's start-up, not a bound under test: slow on a machine loaded past its cores
        wait_until(registered, timeout=60, interval=0.05, what=f"the {side} worker registered")
        return Worker(side, proc, found[0], log)

    def producer(self, side: str) -> Producer:
        proc = subprocess.Popen([sys.executable, "-c", PRODUCER, self.redis_url, self.queue], cwd=self.cwd(side),
                                env=self.env(side), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline() or "{}")
        assert ready.get("reliq", "").startswith(str(self.cwd(side))), (side, ready)
        return Producer(side, proc)

    def enqueue(self, producer: Producer, payloads: list[dict[str, Any]], gap: float = 0.0,
                **options: Any) -> list[str]:
        """``payloads`` enqueued by ``producer`` (each numbered ``n``), their ids noted."""
        return self.noted(payloads, producer.enqueue(self.specs(payloads, **options), gap))

    def specs(self, payloads: list[dict[str, Any]], **options: Any) -> list[list[Any]]:
        for i, p in enumerate(payloads):
            p["n"] = len(self.expected) + i
        return [[TYPE, p, options] for p in payloads]

    def noted(self, payloads: list[dict[str, Any]], ids: list[str]) -> list[str]:
        assert len(ids) == len(set(ids)) == len(payloads)
        self.expected.update(zip(ids, payloads, strict=True))
        return ids

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """This version's ``reliq <args> QUEUE``."""
        return subprocess.run([sys.executable, "-m", "reliq", *args, self.queue, "--redis-url", self.redis_url],
                              cwd=ROOT, env=self.env("new"), capture_output=True, text=True, timeout=60)

    def record(self, task_id: str) -> dict[str, str]:
        return self.r.hgetall(self.keys.task(task_id))  # type: ignore[return-value]

    def state(self, task_id: str) -> str:
        return self.r.hget(self.keys.task(task_id), "state") or "missing"  # type: ignore[return-value]

    def runs(self) -> dict[str, list[dict[str, Any]]]:
        """task id -> the runs of its handler, in order."""
        out: dict[str, list[dict[str, Any]]] = {}
        for line in self.runs_file.read_text().splitlines():
            run = json.loads(line)
            out.setdefault(run["id"], []).append(run)
        return out

    def settled(self, ids: list[str], timeout: float = 30) -> None:
        wait_until(lambda: all(self.state(i) in END for i in ids), timeout=timeout, interval=0.05,
                   what=f"{len(ids)} tasks ended ({sorted({self.state(i) for i in ids})})")

    def holds_nothing(self, w: Worker) -> bool:
        return self.r.llen(self.keys.processing(w.id)) == 0

    def failed_once_by(self, w: Worker, ids: list[str]) -> bool:
        """Each of ``ids`` failed by ``w`` at least once and waiting for its retry, ``w`` holding none."""
        runs = self.runs()
        return (self.holds_nothing(w) and all(self.state(i) in ("retrying", "pending") for i in ids)
                and all(any(r["pid"] == w.proc.pid and r["did"] == "fail" for r in runs.get(i, ())) for i in ids))

    def stop(self, w: Worker) -> None:
        """SIGTERM, as a deploy stops a worker: it drains, hands back, deregisters and exits 0."""
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(timeout=30) == 0, w.log.read_text()
        assert self.r.zscore(self.keys.workers, w.id) is None
        assert "Traceback" not in w.log.read_text(), w.log.read_text()

    def check_results(self) -> dict[str, list[dict[str, Any]]]:
        """Every task enqueued ended as its payload says, its handler having succeeded exactly once
        (none for a dead one), run by the code of the version it says; the runs, by task."""
        runs = self.runs()
        for task_id, payload in self.expected.items():
            record, ran = self.record(task_id), runs.get(task_id, [])
            for run in ran:  # the code that ran it was its side's
                assert run["reliq"].startswith(str(self.cwd(run["side"]) / "reliq")), run
            oks = [r for r in ran if r["did"] == "ok"]
            if "permanent_on" in payload:
                assert record["state"] == "dead" and oks == [], (record, ran)
                assert ran[-1]["did"] == "permanent" and ran[-1]["side"] in payload["permanent_on"], ran
                assert "gives up on" in record["last_error"], record
                continue
            assert record["state"] == "succeeded", (task_id, payload, record, ran)
            assert len(oks) == 1, (task_id, ran)  # exactly once
            assert json.loads(record["result"]) == {"n": payload["n"], "side": oks[0]["side"]}, record
            assert oks[0]["side"] not in payload.get("fail_on", ()), ran
            assert [r["did"] for r in ran] == ["fail"] * (len(ran) - 1) + ["ok"], ran
            if payload.get("fail_first"):
                assert [r["attempt"] for r in ran] == [1, 2], ran
        return runs


@pytest.fixture
def fleet(trees: Trees, redis_url: str, queue_name: str, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(trees, redis_url, queue_name, tmp_path)
    try:
        yield f
    finally:
        for proc in f.procs:
            procs.stop(proc)  # SIGKILL: a held (SIGSTOPped) worker dies of it too
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        f.r.close()


def held_once(w: Worker, condition: Callable[[], bool], what: str) -> None:
    """SIGSTOP ``w`` once ``condition`` holds with ``w`` stopped (so that it still holds while it is)."""
    def stopped_and_holds() -> bool:
        w.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.02)  # a command it sent just before the stop reaches Redis before the check
        if condition():
            return True
        w.proc.send_signal(signal.SIGCONT)
        return False

    wait_until(stopped_and_holds, timeout=30, interval=0.05, what=what)


def resume(w: Worker) -> None:
    w.proc.send_signal(signal.SIGCONT)


def ok(count: int, **payload: Any) -> list[dict[str, Any]]:
    return [dict(payload) for _ in range(count)]


@dataclass(frozen=True)
class Deployed:
    old_producer: Producer
    new_producer: Producer
    old: Worker
    new: Worker


def deployed_onto_a_queue_in_use(fleet: Fleet) -> Deployed:
    """An old producer's tasks first (the queue exists, as the old version left it, before this
    version sees it), then a worker of each version and a producer of this one, that task done."""
    old_producer = fleet.producer("old")
    first = fleet.enqueue(old_producer, ok(10))
    assert fleet.r.exists(fleet.keys.pending) and fleet.r.get(fleet.keys.format) is None
    deployed = Deployed(old_producer, fleet.producer("new"), fleet.worker("old"), fleet.worker("new"))
    fleet.settled(first)
    return deployed


def test_a_queue_in_use_by_the_old_version_keeps_working_with_both_versions_beside_each_other(
    fleet: Fleet
) -> None:
    d = deployed_onto_a_queue_in_use(fleet)
    old_producer, new_producer, old, new = d.old_producer, d.new_producer, d.old, d.new

    # A stream from both producers at once, to both workers; some tasks fail their first attempt.
    streams = {p: [{"sleep": 0.01, "fail_first": True} if i % 8 == 3 else {"sleep": 0.01} for i in range(40)]
               for p in (old_producer, new_producer)}
    specs = {p: fleet.specs(payloads) for p, payloads in streams.items()}
    for p in streams:
        p.send(specs[p], gap=0.005)
    stream = [i for p in streams for i in fleet.noted(streams[p], p.receive())]
    fleet.settled(stream)
    assert fleet.r.get(fleet.keys.format) == "1"  # decided by the first role of this version to use it

    # Records of the old version retried by the new one: the new worker held until the old
    # one has failed each once, then the old one held while the new one runs the retries.
    held_once(new, lambda: fleet.holds_nothing(new), "the new worker idle")
    to_new = [*fleet.enqueue(old_producer, ok(3, fail_on=["old"]), max_retries=20),
              *fleet.enqueue(new_producer, ok(3, fail_on=["old"]), max_retries=20),
              *fleet.enqueue(old_producer, ok(1, fail_on=["old"], permanent_on=["new"]), max_retries=20)]
    held_once(old, lambda: fleet.failed_once_by(old, to_new), "the old worker failed each once")
    resume(new)
    fleet.settled(to_new)

    # And the other way: records the new worker wrote back (retries) run by the old one.
    to_old = [*fleet.enqueue(old_producer, ok(3, fail_on=["new"]), max_retries=20),
              *fleet.enqueue(new_producer, ok(3, fail_on=["new"]), max_retries=20),
              *fleet.enqueue(new_producer, ok(1, fail_on=["new"], permanent_on=["old"]), max_retries=20)]
    held_once(new, lambda: fleet.failed_once_by(new, to_old), "the new worker failed each once")
    resume(old)
    fleet.settled(to_old)
    resume(new)

    runs = fleet.check_results()
    for task_id in to_new + to_old:  # each crossed: failed by one version, ended by the other
        assert len({r["side"] for r in runs[task_id]}) == 2, runs[task_id]
    assert {r["pid"]: r["side"] for rs in runs.values() for r in rs} == {old.proc.pid: "old", new.proc.pid: "new"}
    assert fleet.r.get(fleet.keys.format) == "1"
    assert [i for i in fleet.expected if "body" in fleet.record(i)] == []  # format 1 throughout
    # A success leaves the compact record of format 1, whichever version settled it.
    for task_id in fleet.expected:
        if (record := fleet.record(task_id))["state"] == "succeeded":
            assert {"attempts", "failures", "crashes"} <= record.keys() <= COMPACT_1, record
    fleet.stop(old)
    fleet.stop(new)


def test_the_upgrade_waits_for_the_old_workers_to_go_then_format_1_records_run_beside_format_2(
    fleet: Fleet
) -> None:
    d = deployed_onto_a_queue_in_use(fleet)
    old_producer, new_producer, old, new = d.old_producer, d.new_producer, d.old, d.new

    refused = fleet.cli("records", "upgrade")
    assert refused.returncode == 2, refused
    assert old.id in refused.stderr and new.id not in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert fleet.r.get(fleet.keys.format) == "1"  # nothing written
    shown = json.loads(fleet.cli("records", "show", "--json").stdout)
    assert shown["partitions"] == [{"partition": 0, "format": 1, "older_workers": [old.id]}]

    # Format 1 records left for after the upgrade: retries the old worker failed, then (no
    # worker running at all: the old one gone, the new one held) pending and delayed ones.
    held_once(new, lambda: fleet.holds_nothing(new), "the new worker idle")
    retrying = [*fleet.enqueue(old_producer, ok(2, fail_on=["old"]), max_retries=20),
                *fleet.enqueue(new_producer, ok(2, fail_on=["old"]), max_retries=20)]
    wait_until(lambda: fleet.failed_once_by(old, retrying), timeout=30, interval=0.05,
               what="the old worker failed each once")
    fleet.stop(old)
    before = [*retrying, *fleet.enqueue(old_producer, ok(3)), *fleet.enqueue(new_producer, ok(3)),
              *fleet.enqueue(old_producer, ok(2), delay=1), *fleet.enqueue(new_producer, ok(2), delay=1)]
    for task_id in before:
        assert "payload" in fleet.record(task_id) and "body" not in fleet.record(task_id), fleet.record(task_id)

    upgraded = fleet.cli("records", "upgrade")
    upgraded_at = time.time()
    assert upgraded.returncode == 0, upgraded
    assert "record format 2" in upgraded.stdout, upgraded.stdout
    assert fleet.r.get(fleet.keys.format) == "2"
    shown = fleet.cli("records", "show")
    assert shown.stdout == f"queue {fleet.queue!r} partition 0: record format 2\n", shown
    # None ran yet (no worker runs until the new one resumes), the delayed ones due whenever.
    assert {fleet.state(i) for i in before} <= {"retrying", "pending", "scheduled"}

    # A producer started now writes format 2 at once; one that ran before, once it reads the
    # partition map again (partitions.REFRESH_S), its enqueues meanwhile in format 1.
    fresh = fleet.producer("new")
    after = [*fleet.enqueue(fresh, ok(4)), *fleet.enqueue(fresh, ok(2, fail_first=True)),
             *fleet.enqueue(fresh, ok(2), delay=1)]
    for task_id in after:
        assert "body" in fleet.record(task_id) and "payload" not in fleet.record(task_id), fleet.record(task_id)
    caught_up: list[str] = []

    def writes_format_2() -> bool:
        caught_up.extend(fleet.enqueue(new_producer, ok(1)))
        return "body" in fleet.record(caught_up[-1])

    wait_until(writes_format_2, timeout=REFRESH_S + 10, interval=0.2, what="the running producer writes format 2")
    assert ["body" in fleet.record(i) for i in caught_up] == [False] * (len(caught_up) - 1) + [True]
    after += caught_up
    # A producer of the old version still deployed writes format 1, which this version's workers read.
    late = fleet.enqueue(old_producer, ok(2))
    assert all("payload" in fleet.record(i) for i in late)
    resume(new)
    fleet.settled([*before, *after, *late])

    runs = fleet.check_results()
    for task_id in [*before, *after, *late]:
        assert next(r for r in runs[task_id] if r["did"] == "ok")["at"] > upgraded_at
        assert runs[task_id][-1]["side"] == "new", runs[task_id]
    fleet.stop(new)


@pytest.mark.parametrize("first", ["client", "worker", "serve"])
def test_this_version_first_on_a_new_queue_writes_format_2_from_the_start(
    fleet: Fleet, first: str, tmp_path: Path
) -> None:
    """Whichever role of this version comes first, and before anything of the queue exists."""
    ids: list[str] = []
    if first == "serve":
        port = free_port()
        fleet.procs.append(procs.api(fleet.redis_url, fleet.queue, port, tmp_path / "serve.log"))
        assert fleet.r.get(fleet.keys.format) == "2"  # decided as it started, before it wrote anything
        payload = {"n": 0}
        sent = urllib.request.Request(f"http://127.0.0.1:{port}/task", method="POST",
                                      data=json.dumps({"type": TYPE, "payload": payload}).encode(),
                                      headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(sent, timeout=30) as answer:
            ids += fleet.noted([payload], [json.loads(answer.read())["task_id"]])
    new = fleet.worker("new") if first == "worker" else None
    if new:  # decided as it started, before it registered (which makes a queue one in use)
        assert fleet.r.get(fleet.keys.format) == "2"
    producer = fleet.producer("new")
    ids += fleet.enqueue(producer, ok(1))
    assert fleet.r.get(fleet.keys.format) == "2"  # decided at the first contact: nothing of the queue existed
    new = new or fleet.worker("new")
    ids += [*fleet.enqueue(producer, ok(5)), *fleet.enqueue(producer, ok(2, fail_first=True)),
            *fleet.enqueue(producer, ok(2), delay=0.5), *fleet.enqueue(producer, ok(1, permanent_on=["new"]))]
    assert [i for i in ids if "body" not in fleet.record(i) or "payload" in fleet.record(i)] == []
    fleet.settled(ids)
    fleet.check_results()
    shown = json.loads(fleet.cli("records", "show", "--json").stdout)
    assert shown["partitions"] == [{"partition": 0, "format": 2, "older_workers": []}]
    again = fleet.cli("records", "upgrade")
    assert again.returncode == 0 and "already" in again.stdout, again
    fleet.stop(new)
