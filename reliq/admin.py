"""``reliq dlq ...``, ``reliq stats``, ``reliq pause`` and ``reliq limit``: operations for a terminal.

Each function opens the queue, calls :mod:`reliq.monitor.deadletter` (the same code the monitor's
endpoints use), prints, and returns the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence, Sized
from typing import Any, BinaryIO

import orjson
from rich.console import Console
from rich.table import Table

from reliq import partitions, priorities, records
from reliq.connection import UNAVAILABLE, connect, describe_outage
from reliq.errors import ConfigError, InvalidTask, ScheduleNotFound, TaskNotFound
from reliq.eventloop import run
from reliq.formats import RecordFormat, ScheduleSource
from reliq.limits import Layer, LimitView
from reliq.monitor import deadletter, dlq_io
from reliq.monitor.deadletter import DeadFilter, Replay
from reliq.monitor.metrics import read_workers
from reliq.queue import COUNTERS, Queue, Snapshot
from reliq.schedules import Schedule, ScheduleInfo, read, trigger
from reliq.settings import Settings

Confirm = Callable[[str], bool]
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _with_queue(settings: Settings, body: Callable[[Queue], Awaitable[int]]) -> int:
    """Run ``body`` against the configured queue; Redis outages and unknown ids exit 1."""

    async def main() -> int:
        redis = connect(settings.redis_url, max_connections=4)
        try:
            return await body(Queue(redis, settings))
        except UNAVAILABLE as exc:
            err.print(f"reliq: Redis at {settings.redis_url}: {describe_outage(exc)}")
            return 1
        except TaskNotFound as exc:
            err.print(f"reliq: no task {exc} in the dead-letter queue of {settings.queue!r}")
            return 1
        finally:
            await redis.aclose()

    return run(main)


def _json(data: Any) -> None:
    out.print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode(), markup=False, soft_wrap=True)


def stats(settings: Settings, as_json: bool = False) -> int:
    """``reliq stats``: depths, lag, workers and counters of the queue."""

    async def body(queue: Queue) -> int:
        snap = await queue.snapshot()
        workers = await read_workers(queue)
        if as_json:
            _json({**snap, "worker_list": workers})
            return 0
        table = Table(title=f"queue {snap['queue']}", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column(justify="right")
        for name in ("pending", "processing", "delayed", "dead_letter", "workers"):
            table.add_row(name, f"{snap[name]:,}")
        table.add_row("lag", f"{snap['lag_s']:.3f} s")
        for row in _pending_rows(snap):
            table.add_row(*row)
        paused = snap["paused"]
        if paused["queue"]:
            table.add_row("paused", f"{paused['queue']['paused_s']:.0f} s, by {paused['queue']['by']}")
        for name, p in paused["types"].items():
            table.add_row(f"paused type {name}", f"{p['held']:,} held, {p['paused_s']:.0f} s, by {p['by']}")
        for name in COUNTERS:
            table.add_row(f"{name} (total)", f"{snap[name]:,}")  # type: ignore[literal-required]
        out.print(table)
        if "partitions" in snap:
            out.print(_partition_table(f"{len(snap['partitions'])} partitions", snap["partitions"]))
        for w in workers:
            out.print(f"worker {w['id']}  {w['host']} pid {w['pid']}  {w['in_flight']}/{w['concurrency']} busy  "
                      f"{w['processed']:,} processed  heartbeat {w['heartbeat_age_s']:.1f}s ago", markup=False)
        return 0

    return _with_queue(settings, body)


def _pending_rows(snap: Snapshot) -> list[tuple[str, str]]:
    """How pending splits, where it says more than the total: by priority, set aside, in keys' lists."""
    rows = []
    by_priority = {p: n for p, n in snap["pending_by_priority"].items() if n}
    if set(by_priority) - {str(priorities.DEFAULT)}:
        rows.append(("pending by priority", ", ".join(f"{p}: {n:,}" for p, n in by_priority.items())))
    if snap["limited"]:
        rows.append(("  of pending: set aside for a token", f"{snap['limited']:,}"))
    if snap["keyed"]:
        rows.append(("  of pending: in keys' lists", f"{snap['keyed']:,}"))
    return rows


def dlq_list(settings: Settings, flt: DeadFilter, page: int, per_page: int, as_json: bool = False) -> int:
    """``reliq dlq list``: one page of dead tasks, newest first."""

    async def body(queue: Queue) -> int:
        result = await deadletter.page(queue, flt, offset=(page - 1) * per_page, limit=per_page, facets=flt.active)
        if as_json:
            _json(result)
            return 0
        if not result["items"]:
            out.print("the dead-letter queue is empty" + (" for this filter" if flt.active else ""))
            return 0
        table = Table(title=f"dead letters of {settings.queue!r}: {result['total']:,} "
                      f"(page {page}, {per_page} a page)", title_justify="left")
        table.add_column("id", no_wrap=True, min_width=26)  # ids are for copying: never cut
        for column in ("failed at", "type", "reason", "attempts", "last error"):
            table.add_column(column, overflow="fold")
        for item in result["items"]:
            table.add_row(item["task_id"], item["failed_at"] or "-", item["type"], item["reason"],
                          str(item["attempts"]), item["last_error"].splitlines()[0] if item["last_error"] else "")
        out.print(table)
        return 0

    return _with_queue(settings, body)


def dlq_show(settings: Settings, task_id: str) -> int:
    """``reliq dlq show ID``: the full record of a dead task, as JSON."""

    async def body(queue: Queue) -> int:
        _json(await deadletter.show(queue, task_id))
        return 0

    return _with_queue(settings, body)


def _filter_words(flt: DeadFilter) -> str:
    parts = [f"{name} {value!r}" for name, value in (("type", flt.type), ("reason", flt.reason)) if value]
    return " with " + " and ".join(parts) if parts else ""


def _by_ids(verb: str, done: int, ids: Sequence[str]) -> int:
    """Report an action on named ids; exit 1 when some of them were not dead."""
    out.print(f"{verb} {done} of {len(ids)} task(s)" + ("" if done == len(ids) else "; the rest were not dead"))
    return 0 if done == len(ids) else 1


async def _ask(queue: Queue, flt: DeadFilter, confirm: Confirm, question: Callable[[int], str]) -> int | None:
    """Confirm a bulk action: None to go ahead, else the exit code (0 nothing matches, 1 declined)."""
    total = len(await deadletter.matching_ids(queue, flt))
    if not total:
        out.print("no dead task matches")
        return 0
    return None if confirm(question(total)) else 1


def dlq_requeue(settings: Settings, ids: Sequence[str], flt: DeadFilter, rate: float | None,
                confirm: Confirm) -> int:
    """``reliq dlq requeue``: the given ids, or every dead task matching (``--all``/filters)."""

    async def body(queue: Queue) -> int:
        if ids:
            return _by_ids("requeued", await queue.dead_requeue(ids=list(ids)), ids)
        pace = f" at {rate:g}/s" if rate else ""
        stop = await _ask(queue, flt, confirm, lambda n: f"Requeue {n:,} dead task(s){_filter_words(flt)}{pace}?")
        if stop is not None:
            return stop
        job = Replay(queue, flt, rate)
        printer = asyncio.create_task(_progress(job))
        view = await job.run()
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer
        out.print(f"requeued {view['requeued']:,} task(s)"
                  + (f", {view['skipped']} skipped (no longer dead)" if view["skipped"] else ""))
        return 0 if view["state"] == "done" else 1

    return _with_queue(settings, body)


async def _progress(job: Replay) -> None:
    while True:
        await asyncio.sleep(2.0)
        out.print(f"... {job.requeued:,} of {job.total or 0:,} requeued", markup=False)


def dlq_edit(settings: Settings, task_id: str, payload: Any, requeue: bool = False) -> int:
    """``reliq dlq edit ID --payload`` (and ``requeue ID --payload``): change, then maybe requeue."""

    async def body(queue: Queue) -> int:
        if not await deadletter.edit(queue, task_id, payload, editor(), requeue=requeue):
            raise TaskNotFound(task_id)
        out.print(f"{'edited and requeued' if requeue else 'edited'} {task_id}", markup=False)
        return 0

    return _with_queue(settings, body)


def editor() -> str:
    """Who edits from this terminal, for the record: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()} (cli)"


def dlq_export(settings: Settings, flt: DeadFilter, archived: bool) -> int:
    """``reliq dlq export``: JSON Lines on stdout, a summary on stderr."""

    async def body(queue: Queue) -> int:
        n = 0
        async for line in dlq_io.export(queue, flt, archived):
            sys.stdout.buffer.write(dlq_io.encode(line))
            n += 1
        sys.stdout.buffer.flush()
        err.print(f"exported {n:,} dead task(s){_filter_words(flt)} of {queue.name!r}"
                  + (", archived ones included" if archived else ""))
        return 0

    return _with_queue(settings, body)


def dlq_import(settings: Settings, file: BinaryIO, queue_flag: str | None) -> int:
    """``reliq dlq import FILE``: check the whole file first (exit 2, nothing written), then import."""
    try:
        by_queue = dlq_io.parse(file, queue_flag)
    except InvalidTask as exc:
        err.print(f"reliq: {getattr(file, 'name', 'input')}: {exc}; nothing was imported", markup=False,
                  soft_wrap=True)
        return 2

    async def body(queue: Queue) -> int:
        for name, tasks in by_queue.items():
            created = await dlq_io.import_tasks(Queue(queue.redis, settings, name), tasks)
            out.print(f"{name}: imported {len(created):,} dead task(s), skipped {len(tasks) - len(created):,} "
                      "whose id exists already", markup=False)
        return 0

    return _with_queue(settings, body)


def dlq_purge(settings: Settings, ids: Sequence[str], flt: DeadFilter, confirm: Confirm) -> int:
    """``reliq dlq purge``: delete the given ids, or every dead task matching (``--all``/filters)."""

    async def body(queue: Queue) -> int:
        if ids:
            return _by_ids("deleted", await queue.dead_purge(ids=list(ids)), ids)
        stop = await _ask(queue, flt, confirm, lambda n: f"Delete {n:,} dead task(s){_filter_words(flt)} and their "
                                                         "records, for good?")
        if stop is not None:
            return stop
        out.print(f"deleted {await deadletter.purge(queue, flt):,} task(s)")
        return 0

    return _with_queue(settings, body)


def pause(settings: Settings, task_type: str | None, resume: bool = False) -> int:
    """``reliq pause QUEUE [--type T]`` (and ``reliq resume``): the queue is ``settings.queue``."""

    async def body(queue: Queue) -> int:
        what = f"type {task_type!r} of queue {queue.name!r}" if task_type else f"queue {queue.name!r}"
        if resume:
            was, moved = await queue.resume(task_type)
            held = f"; {moved:,} held task(s) back in pending" if moved else ""
            out.print(f"resumed {what}{held}" if was else f"{what} was not paused", markup=False)
            return 0
        now, _ = await queue.pause(task_type, editor())
        out.print(f"paused {what}" if now else f"{what} was paused already", markup=False)
        return 0

    return _with_queue(settings, body)


def limit_set(settings: Settings, task_type: str, layer: Layer) -> int:
    """``reliq limit set TYPE``: change the type's run-time limits; exit 2 for limits that cannot be."""

    async def body(queue: Queue) -> int:
        try:
            view = await queue.set_limits(task_type, layer)
        except InvalidTask as exc:
            err.print(f"reliq: {exc}; nothing was changed", markup=False)
            return 2
        out.print(f"{task_type} in {queue.name!r}: {_limits_text(view)}", markup=False)
        return 0

    return _with_queue(settings, body)


def limit_clear(settings: Settings, task_type: str) -> int:
    """``reliq limit clear TYPE``: drop its run-time limits (the declared ones apply again)."""

    async def body(queue: Queue) -> int:
        await queue.write_limits("set", {task_type: None})
        view = (await queue.limits([task_type]))[task_type]
        out.print(f"{task_type} in {queue.name!r}: run-time limits cleared; now {_limits_text(view)}", markup=False)
        return 0

    return _with_queue(settings, body)


def limit_show(settings: Settings, as_json: bool = False) -> int:
    """``reliq limit show``: every type of the queue with limits."""

    async def body(queue: Queue) -> int:
        views = await queue.limits()
        table = _listing(views, as_json, {"queue": queue.name, "types": views},
                         f"no task type of {queue.name!r} has limits", f"limits of queue {queue.name!r}",
                         ("type", "rate", "key concurrency", "ordered", "set aside", "from"))
        if table is None:
            return 0
        for name, v in views.items():
            source = " + ".join(n for n in ("declared", "set") if v[n])
            due = f" (due in {v['due_in_s']:.1f} s)" if v["due_in_s"] is not None else ""
            table.add_row(name, v["rate"] or "-", str(v["key_concurrency"] or "-"), "yes" if v["ordered"] else "no",
                          f"{v['limited']:,}{due}", source or "-")
        out.print(table)
        return 0

    return _with_queue(settings, body)


def _listing(views: Sized, as_json: bool, document: Mapping[str, Any], empty: str, title: str,
             columns: Sequence[str], whole_first: bool = False) -> Table | None:
    """The empty table a listing command fills with ``views``; None when it printed them already.

    With ``as_json`` it printed ``document``; without views, ``empty``. Long cells fold,
    but for the first column's with ``whole_first``.
    """
    if as_json:
        _json(document)
        return None
    if not views:
        out.print(empty, markup=False)
        return None
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        if i == 0 and whole_first:
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, overflow="fold")
    return table


def _limits_text(v: LimitView) -> str:
    parts = [f"rate {v['rate']}" if v["rate"] else "no rate limit",
             f"key concurrency {v['key_concurrency']}" if v["key_concurrency"] else "no key concurrency bound"]
    if v["ordered"]:
        parts.append("ordered")
    return ", ".join(parts)


def schedule_list(settings: Settings, as_json: bool = False) -> int:
    """``reliq schedule list``: every schedule of the queue."""

    async def body(queue: Queue) -> int:
        views = await read(queue)
        table = _listing(views, as_json, {"queue": queue.name, "schedules": views},
                         f"no schedule in queue {queue.name!r}", f"schedules of queue {queue.name!r}",
                         ("name", "when", "type", "next run", "last run", "enqueued", "skipped"), whole_first=True)
        if table is None:
            return 0
        for v in views:
            last = f"{v['last_enqueued_at']} {v['last_task_state'] or 'gone'}" if v["last_task_id"] else "-"
            table.add_row(v["name"], _when(v), v["type"] or "-", "paused" if v["paused"] else v["next_run"] or "-",
                          last, f"{v['enqueued']:,}", f"{v['skipped']:,}")
        out.print(table)
        return 0

    return _with_queue(settings, body)


def _when(v: ScheduleInfo) -> str:
    if v["error"]:
        return f"unreadable: {v['error']}"
    return f"every {v['every']:g} s" if v["every"] is not None else f"{v['cron']} ({v['tz']})"


def schedule_add(settings: Settings, schedule: Schedule) -> int:
    """``reliq schedule add NAME``: define it at run time."""

    async def body(queue: Queue) -> int:
        outcome = await queue.schedule_put(schedule, ScheduleSource.API)
        [view] = await read(queue, schedule.name)
        out.print(f"schedule {schedule.name!r} of queue {queue.name!r} {outcome}: {_when(view)}, next run "
                  f"{view['next_run'] or '(paused)'}", markup=False)
        return 0

    return _with_queue(settings, body)


def schedule_act(settings: Settings, name: str, action: str) -> int:
    """``reliq schedule remove|trigger|pause|resume NAME``; exit 1 when there is no such schedule."""

    async def body(queue: Queue) -> int:
        what = f"schedule {name!r} of queue {queue.name!r}"
        done: bool | None
        try:
            if action == "trigger":
                out.print(await trigger(queue, name), markup=False)
                return 0
            if action == "remove":
                done = await queue.schedule_remove(name) or None
            else:
                done = await queue.schedule_pause(name, action == "pause", editor())
        except ScheduleNotFound:
            done = None
        if done is None:
            err.print(f"reliq: no {what}", markup=False)
            return 1
        done_text, not_text = {"remove": ("removed", ""), "pause": ("paused", "was paused already"),
                               "resume": ("resumed", "was not paused")}[action]
        out.print(f"{what} {done_text if done else not_text}", markup=False)
        return 0

    return _with_queue(settings, body)


def show_partitions(settings: Settings, as_json: bool = False) -> int:
    """``reliq partitions show QUEUE``: the partition map, where each partition lives, its depths."""

    async def body(queue: Queue) -> int:
        pmap = await partitions.read(queue)
        queue.adopt(pmap)
        nodes = await partitions.placement(queue.redis, pmap)
        snaps = [await part.snapshot() for part in queue.parts_now()]
        rows = partitions.rows(pmap, nodes, snaps)
        if as_json:
            _json({"queue": queue.name, "partitions": pmap.n, "version": pmap.version, "map": rows})
            return 0
        out.print(_partition_table(f"queue {queue.name}: {pmap.n} partition(s)", rows))
        return 0

    return _with_queue(settings, body)


def set_partitions(settings: Settings, n: int) -> int:
    """``reliq partitions set QUEUE N``: grow the queue to N partitions (exit 2 when refused)."""

    async def body(queue: Queue) -> int:
        try:
            before, after = await partitions.grow(queue, n)
        except ConfigError as exc:
            err.print(f"reliq: {exc}", markup=False)
            return 2
        if before == after:
            out.print(f"queue {queue.name!r} has {n} partition(s) already", markup=False)
            return 0
        nodes = await partitions.placement(queue.redis, after)
        where = ", ".join(f"{{{tag}}}" + (f" on {node}" if node else "")
                          for tag, node in zip(after.tags, nodes, strict=True))
        out.print(f"queue {queue.name!r}: {before.n} -> {after.n} partitions ({where}); start its workers and "
                  "producers again (those running read the new map within a few seconds)", markup=False)
        return 0

    return _with_queue(settings, body)


def show_records(settings: Settings, as_json: bool = False) -> int:
    """``reliq records show QUEUE``: the record format each partition's producers write, and older workers."""

    async def body(queue: Queue) -> int:
        rows = await records.formats(queue)
        if as_json:
            _json({"queue": queue.name, "partitions": [
                {"partition": p.partition, "format": int(p.format), "older_workers": list(p.older)} for p in rows]})
            return 0
        for p in rows:
            older = f"; workers of a version before format 2: {', '.join(p.older)}" if p.older else ""
            out.print(f"queue {queue.name!r} partition {p.partition}: record format {int(p.format)}{older}",
                      markup=False)
        return 0

    return _with_queue(settings, body)


def upgrade_records(settings: Settings) -> int:
    """``reliq records upgrade QUEUE``: producers write record format 2 from now on (exit 2 when refused)."""

    async def body(queue: Queue) -> int:
        try:
            before = await records.upgrade(queue)
        except ConfigError as exc:
            err.print(f"reliq: {exc}", markup=False)
            return 2
        turned = [p.partition for p in before if p.format != RecordFormat.BODY]
        out.print(f"queue {queue.name!r}: record format 2 " + (
            f"from now on in partition(s) {', '.join(map(str, turned))} (records written before keep their "
            "format until they end; every worker of this version reads both)" if turned else "already"),
            markup=False)
        return 0

    return _with_queue(settings, body)


#: The columns of a table of partitions (``reliq partitions show``, ``reliq stats``).
PARTITION_COLUMNS = ("partition", "tag", "node", "pending", "processing", "delayed", "dead_letter", "workers")


def _partition_table(title: str, rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in PARTITION_COLUMNS:
        table.add_column(column, justify="left" if column in ("tag", "node") else "right")
    for row in rows:
        table.add_row(*("{" + str(row[c]) + "}" if c == "tag" else str(row[c]) if c != "node" else row[c] or "-"
                        for c in PARTITION_COLUMNS))
    return table
