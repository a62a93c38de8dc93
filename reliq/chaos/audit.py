"""The verdict of a chaos run: every accepted task checked by id, duplicates explained,
recovery after each kill timed, and the counters held against the task records.

``collect`` reads the queue's final state from Redis; ``audit`` is a pure function of
that state, the log of 202s, the execution log and the fault log, so it is tested on
made-up inputs without running a cluster.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reliq.chaos.faults import KINDS, Event, FaultLog
from reliq.chaos.load import FAIL_RETRIES, Accepted
from reliq.chaos.tasks import POISON
from reliq.formats import DeadReason, Metric, RunOutcome, TaskState, split_metric
from reliq.queue import COUNTERS, Queue

#: States a task can stay in once the run is over (a chaos run cancels nothing).
CHAOS_END_STATES = (TaskState.SUCCEEDED, TaskState.DEAD)
#: The outcomes the stats hash counts as failed.
FAILED = (RunOutcome.ERROR, RunOutcome.TIMEOUT, RunOutcome.PERMANENT, RunOutcome.UNKNOWN_TYPE)


@dataclass(slots=True)
class Execution:
    """One run of a handler, from the execution log; ``end`` is None when its process died."""

    task_id: str
    pid: int
    attempt: int
    start: float
    end: float | None = None
    outcome: str | None = None


def read_executions(path: Path) -> dict[str, list[Execution]]:
    """Executions per task id, in order of start, from the log the chaos handlers write."""
    runs: dict[tuple[str, int, int], Execution] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            f = line.split()
            if len(f) < 5:
                continue  # cannot happen with atomic appends; never let it crash the audit
            key = (f[1], int(f[2]), int(f[3]))
            at = int(f[4]) / 1e9
            if f[0] == "S":
                runs[key] = Execution(f[1], key[1], key[2], at)
            elif f[0] == "E" and key in runs:
                runs[key].end, runs[key].outcome = at, f[5]
    out: dict[str, list[Execution]] = {}
    for e in sorted(runs.values(), key=lambda e: e.start):
        out.setdefault(e.task_id, []).append(e)
    return out


@dataclass(slots=True)
class RedisState:
    """What is left in Redis after the run: every record, list and counter of the queue."""

    records: dict[str, dict[str, str]]
    dead: list[str]
    pending: int
    delayed: int
    processing: dict[str, list[str]]  # worker id -> ids still in its processing list
    workers: list[str]
    counters: dict[str, int]
    metrics: dict[str, int]
    #: The keys' state (docs/flow-control.md): slots taken, markers, ring length, and the
    #: counts ready and aside (Queue.flow_state).
    flow: dict[str, int] = dataclasses.field(default_factory=dict)


async def collect(queue: Queue) -> RedisState:
    """Read the queue's whole final state: each partition's, merged (reliq/partitions.py)."""
    return merge([await _collect_partition(part) for part in await queue.parts()])


async def _collect_partition(queue: Queue) -> RedisState:
    ids = await queue.task_ids()
    records = {task_id: {f: v for f, v in record.items() if f not in ("payload", "body")}
               for task_id, record in zip(ids, await queue.records(ids), strict=True)}
    snap = await queue.snapshot()
    return RedisState(
        records=records,
        dead=await queue.dead_ids(0, snap["dead_letter"]),
        pending=snap["pending"],
        delayed=snap["delayed"],
        processing=await queue.processing_lists(),
        workers=await queue.worker_ids(),
        counters={c: int(snap[c]) for c in COUNTERS},  # type: ignore[literal-required]
        metrics=await queue.metric_counts(),
        flow=await queue.flow_state(),
    )


def merge(states: Sequence[RedisState]) -> RedisState:
    """The partitions' states as one queue's: records, lists and counts together; a worker
    (registered in every partition it serves) once, holding what it holds in any of them."""
    if len(states) == 1:
        return states[0]
    processing: dict[str, list[str]] = {}
    for s in states:
        for worker_id, held in s.processing.items():
            processing.setdefault(worker_id, []).extend(held)
    return RedisState(
        records={i: r for s in states for i, r in s.records.items()},
        dead=[i for s in states for i in s.dead],
        pending=sum(s.pending for s in states),
        delayed=sum(s.delayed for s in states),
        processing=processing,
        workers=sorted({w for s in states for w in s.workers}),
        counters=_summed([s.counters for s in states]),
        metrics=_summed([s.metrics for s in states]),
        flow=_summed([s.flow for s in states]),
    )


def _summed(counts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    """Counts added up by name, zeros kept (a Counter's sum would drop them)."""
    return {name: sum(c.get(name, 0) for c in counts) for name in dict.fromkeys(n for c in counts for n in c)}


def worker_pid(worker_id: str) -> int:
    """The pid inside a worker id (``host:pid:random``); -1 when it has none."""
    parts = worker_id.rsplit(":", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else -1


# -- the checks ---------------------------------------------------------------------------


def _quarantined_by_faults(record: Mapping[str, str], runs: list[Execution], events: list[Event]) -> bool:
    """Whether every crash on an innocent task's record is one of our SIGKILLs or stalls.

    A task that was running alone on a worker we killed looks to the reaper exactly like a
    poison pill; after ``crash_limit`` such kills it is quarantined, by design. It is in
    the dead-letter queue with its reason, not lost, but it is reported apart.
    """
    hit = {ev.pid for ev in events if ev.role == "worker" and ev.action.split()[0] in ("kill", "stop", "partition")}
    return sum(1 for e in runs if e.pid in hit) >= int(record.get("crashes", 0) or 0) > 0


def _outcomes(accepted: Mapping[str, Accepted], state: RedisState,
              execs: Mapping[str, list[Execution]], events: list[Event]) -> dict[str, Any]:
    """Each accepted task against the final state it had to reach (and a success must have run)."""
    lost, wrong, by_faults = [], [], []
    unrun = [i for i, r in state.records.items()
             if r.get("state") == TaskState.SUCCEEDED and not any(e.outcome == "ok" for e in execs.get(i, ()))]
    reached: Counter[str] = Counter()
    for a in accepted.values():
        rec = state.records.get(a.id)
        if rec is None or rec.get("state") not in CHAOS_END_STATES:
            lost.append({"id": a.id, "type": a.type, "state": rec.get("state") if rec else "no record"})
            continue
        got = rec["state"] if rec["state"] == TaskState.SUCCEEDED else f"dead:{rec.get('reason', '')}"
        reached[got] += 1
        if got == "dead:crashed" and _quarantined_by_faults(rec, execs.get(a.id, []), events):
            by_faults.append(a.id)
        elif got != a.expect:
            wrong.append({"id": a.id, "type": a.type, "expected": a.expect, "got": got,
                          "last_error": rec.get("last_error", "")})
    unacked = [i for i in state.records if i not in accepted]
    stuck_unacked = [i for i in unacked if state.records[i].get("state") not in CHAOS_END_STATES]
    return {"accepted": len(accepted), "succeeded": reached["succeeded"],
            "dead": sum(n for s, n in reached.items() if s.startswith("dead")), "reached": dict(reached),
            "lost": len(lost), "lost_tasks": lost[:50], "wrong": len(wrong), "wrong_tasks": wrong[:50],
            "quarantined_by_injected_kills": by_faults[:50],
            "created_without_202": len(unacked), "stuck_without_202": stuck_unacked[:50],
            "succeeded_without_running": unrun[:50]}


def _reruns(runs: list[Execution]) -> int:
    """Executions that repeat work: each one not preceded by an execution that failed."""
    return sum(1 for prev, _ in itertools.pairwise(runs) if prev.outcome != "error")


def _cause(task_id: str, runs: list[Execution], events: list[Event], lease: float) -> str:
    """The fault on a worker that ran the task which explains why it ran again, or 'unexplained'."""
    pids = {e.pid for e in runs}
    low, high = runs[0].start - lease - 2.0, runs[-1].start
    causes = {"kill": "worker SIGKILL", "stop": "worker stall", "term": "rolling restart",
              "partition": "network partition"}
    for ev in events:
        if ev.role == "worker" and ev.pid in pids and low <= ev.t <= high:
            action = ev.action.split()[0]
            if action in causes:
                return causes[action]
            if action == "died":
                return "worker crashed (poison pill)"
    return "unexplained"


def _duplicates(accepted: Mapping[str, Accepted], execs: Mapping[str, list[Execution]], events: list[Event],
                lease: float) -> dict[str, Any]:
    """Tasks that ran more than once (retries after a failure excepted), and why."""
    causes: Counter[str] = Counter()
    unexplained = []
    tasks = runs_total = 0
    for task_id, runs in execs.items():
        a = accepted.get(task_id)
        if (a and a.type == POISON) or not (n := _reruns(runs)):
            continue  # the poison pill runs crash_limit times by design
        tasks += 1
        runs_total += n
        cause = _cause(task_id, runs, events, lease)
        causes[cause] += 1
        if cause == "unexplained":
            unexplained.append({"id": task_id, "runs": [[e.pid, e.attempt, round(e.start, 3), e.outcome]
                                                        for e in runs]})
    return {"duplicated": tasks, "duplicate_runs": runs_total, "causes": dict(causes),
            "unexplained": len(unexplained), "unexplained_tasks": unexplained[:50]}


def _kills(events: list[Event], execs: Mapping[str, list[Execution]]) -> list[tuple[Event, float]]:
    """Worker deaths by SIGKILL (ours or the poison pill's) with the time each happened."""
    last_start: dict[int, float] = {}
    for runs in execs.values():
        for e in runs:
            last_start[e.pid] = max(last_start.get(e.pid, 0.0), e.start)
    out = []
    for ev in events:
        if ev.role != "worker":
            continue
        if ev.action == "kill":
            out.append((ev, ev.t))
        elif ev.action.startswith("died"):  # noticed a little late: the poison's own start is closer
            out.append((ev, min(ev.t, last_start.get(ev.pid, ev.t))))
    return out


def _recovery(events: list[Event], execs: Mapping[str, list[Execution]], state: RedisState) -> dict[str, Any]:
    """For each kill, the time until every task its worker was running had started again elsewhere."""
    per_kill: list[dict[str, Any]] = []
    for ev, at in _kills(events, execs):
        waits, quarantined = [], 0
        for task_id, runs in execs.items():
            before = [e for e in runs if e.start <= at + 0.001]
            if not before or before[-1].pid != ev.pid or before[-1].outcome == "error":
                continue  # not held by this worker then, or its next run is an ordinary retry
            again = [e.start for e in runs if e.start > at and e.pid != ev.pid]
            if again:
                waits.append(min(again) - at)
            elif before[-1].end is None and state.records.get(task_id, {}).get("reason") == "crashed":
                quarantined += 1
                waits.append(int(state.records[task_id].get("finished_at", 0)) / 1000 - at)
        per_kill.append({"pid": ev.pid, "how": ev.action.split()[0], "at": round(at, 3), "tasks": len(waits),
                         "quarantined": quarantined, "recovery_s": round(max(waits), 3) if waits else None})
    times: list[float] = [k["recovery_s"] for k in per_kill if k["recovery_s"] is not None]
    return {"kills": per_kill, "measured": len(times),
            "median_s": round(statistics.median(times), 3) if times else None,
            "max_s": round(max(times), 3) if times else None}


def _check(name: str, expected: int, actual: int, why: str) -> dict[str, Any]:
    return {"name": name, "expected": expected, "actual": actual, "ok": expected == actual, "why": why}


def _counters(state: RedisState) -> list[dict[str, Any]]:
    """Equalities between the stats counters, the metrics and the task records.

    They hold exactly when no record expired or was purged and nothing was cancelled
    during the run (all true of a chaos run). The only tasks requeued from the
    dead-letter queue are ``chaos.fail`` tasks dead of ``error`` (the monitor-kill fault):
    each such earlier life had exactly ``FAIL_RETRIES + 1`` failures, ``FAIL_RETRIES``
    retries and one dead-lettering, which a requeue wipes from the record but not from
    the counters.
    """
    c, recs = state.counters, state.records.values()
    states = Counter(r.get("state") for r in recs)
    reasons = Counter(r.get("reason") for r in recs if r.get("state") == TaskState.DEAD)
    failures = sum(int(r.get("failures", 0)) for r in recs)
    crashes = sum(int(r.get("crashes", 0)) for r in recs)
    metric = Counter[str]()
    for field, n in state.metrics.items():
        kind, _, outcome = split_metric(field)
        if kind == Metric.RUNS:
            metric[outcome] += n
    permanent = reasons[DeadReason.PERMANENT] + reasons[DeadReason.UNKNOWN_TYPE]
    requeued = c["requeued"]
    return [
        _check("enqueued == task records", c["enqueued"], len(state.records), "every enqueue created one record"),
        _check("succeeded == records succeeded", c["succeeded"], states["succeeded"], "one count per applied ack"),
        _check("dead == records dead + requeued", c["dead"], states["dead"] + requeued,
               "one count per dead-lettering; a requeued task died twice"),
        _check("dead-letter list length == records dead", len(state.dead), states["dead"], "every dead task is listed"),
        _check(f"failed == sum(failures) + dead(permanent, unknown_type) + {FAIL_RETRIES + 1} * requeued", c["failed"],
               failures + permanent + (FAIL_RETRIES + 1) * requeued, "each applied failure counts once on the record"),
        _check(f"retried == sum(failures) - dead(error, timeout) + {FAIL_RETRIES} * requeued", c["retried"],
               failures - reasons[DeadReason.ERROR] - reasons[DeadReason.TIMEOUT] + FAIL_RETRIES * requeued,
               "every failure but the last of each life was retried"),
        _check("metrics ok == succeeded", c["succeeded"], metric[RunOutcome.OK], "settle writes both together"),
        _check("metrics failures == failed", c["failed"],
               sum(metric[o] for o in FAILED), "settle writes both"),
        _check("sum(crashes) <= recovered + dead(crashed)", 1,
               int(crashes <= c["recovered"] + reasons[DeadReason.CRASHED]),
               "a crash is counted when its task is reaped"),
        _check("pending + delayed == 0", 0, state.pending + state.delayed, "the queue drained"),
        _check("records not final == 0", 0, sum(n for s, n in states.items() if s not in CHAOS_END_STATES),
               "the queue drained"),
        _check("cancelled == 0", 0, c["cancelled"], "the run cancels nothing"),
        *_flow(state.flow),
    ]


def _flow(flow: Mapping[str, int]) -> list[dict[str, Any]]:
    """No slot of a key leaked, whatever was killed: every count back to nothing once the queue drained."""
    if not flow:
        return []
    return [
        _check("key slots taken == 0", 0, flow["slots"], "every keyed task gave its slot back: settled or reaped"),
        _check("keys with a marker == 0", 0, flow["markers"] + flow["ring"], "no key waits for a turn"),
        _check("keyed tasks ready == 0", 0, flow["ready"], "the keys' lists drained"),
        _check("markers set aside == 0", 0, flow["aside"], "nothing paused or limited in a chaos run"),
    ]


def _orphans(state: RedisState, live_pids: Iterable[int]) -> dict[str, Any]:
    """Processing lists still holding tasks, and registrations of workers that are gone."""
    live = set(live_pids)
    held = {w: ids for w, ids in state.processing.items() if ids}
    return {"nonempty_processing_lists": held,
            "of_dead_workers": sorted(w for w in held if worker_pid(w) not in live),
            "dead_workers_registered": sorted(w for w in state.workers if worker_pid(w) not in live)}


def audit(accepted: Mapping[str, Accepted], execs: Mapping[str, list[Execution]], faults: FaultLog,
          state: RedisState, live_pids: Iterable[int], lease: float) -> dict[str, Any]:
    """The report of a run (see ``reliq chaos --help``); ``ok`` is False when anything failed."""
    tasks = _outcomes(accepted, state, execs, faults.events)
    dups = _duplicates(accepted, execs, faults.events, lease)
    counters = _counters(state)
    orphans = _orphans(state, live_pids)
    problems = []
    if tasks["lost"]:
        problems.append(f"{tasks['lost']} accepted task(s) lost")
    if tasks["wrong"]:
        problems.append(f"{tasks['wrong']} task(s) ended in the wrong state")
    if tasks["stuck_without_202"]:
        problems.append(f"{len(tasks['stuck_without_202'])} task(s) created without a 202 never finished")
    if tasks["succeeded_without_running"]:
        problems.append(f"{len(tasks['succeeded_without_running'])} task(s) succeeded without a successful run")
    if dups["unexplained"]:
        problems.append(f"{dups['unexplained']} duplicate(s) not explained by a kill or stall of their worker")
    problems += [f"counter check failed: {c['name']} (expected {c['expected']}, got {c['actual']})"
                 for c in counters if not c["ok"]]
    if orphans["nonempty_processing_lists"]:
        problems.append(f"tasks left in processing lists: {orphans['nonempty_processing_lists']}")
    if orphans["dead_workers_registered"]:
        problems.append(f"dead workers still registered: {orphans['dead_workers_registered']}")
    kinds = Counter(f.kind for f in faults.faults)
    return {
        "ok": not problems, "problems": problems,
        "faults": {k: kinds[k] for k in KINDS},
        "worker_crashes": sum(1 for e in faults.events if e.role == "worker" and e.action.startswith("died")),
        "tasks": tasks,
        "executions": sum(len(r) for r in execs.values()),
        "duplicates": dups,
        "recovery": _recovery(faults.events, execs, state),
        "counters": counters,
        "orphans": orphans,
        "stats": state.counters,
    }
