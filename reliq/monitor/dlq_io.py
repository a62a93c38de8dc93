"""Export dead tasks as JSON Lines, and import them back (``reliq dlq export|import``).

One line a task: ``{"task_id", "queue", "archived", "evicted_at", "record"}`` where
``record`` is the task's whole hash as record format 1 spells it (formats.as_format_1,
whichever format it is stored in), with ``payload`` and ``edits`` as JSON values (so
``jq`` can read and change them) and every other field as the string Redis holds.
Nothing is lost between an export and an import.

Import is idempotent by task id: a line whose id has a record in its queue, in any
state (dead, requeued and pending, succeeded...), is skipped, so importing a file
twice creates nothing twice and never resurrects a task that was requeued meanwhile.
Imported tasks are dead-lettered again (state ``dead``), at the oldest end of the list.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any, TypedDict

import orjson

from reliq.errors import ConfigError, InvalidTask
from reliq.formats import as_format_1
from reliq.monitor.deadletter import SCAN_CHUNK, DeadFilter
from reliq.queue import Queue
from reliq.settings import check_queue_name

#: Record fields that hold JSON values rather than text.
JSON_FIELDS = ("payload", "edits")
#: Tasks a dead_import call creates at most (one script call; a few ms of Redis).
IMPORT_BATCH = 200
#: Longest task id accepted from a file (ours are 26 characters).
MAX_ID_LEN = 200


class ExportLine(TypedDict):
    """One dead task of an export file."""

    task_id: str
    queue: str
    archived: bool
    evicted_at: str | None
    record: dict[str, Any]


def _line(queue: str, task_id: str, fields: dict[str, str], evicted_ms: int | None = None) -> ExportLine:
    record: dict[str, Any] = as_format_1(dict(fields))
    for name in JSON_FIELDS:
        if name in record:
            record[name] = orjson.loads(record[name]) if record[name] else None
    evicted = None if evicted_ms is None else (
        datetime.fromtimestamp(evicted_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    return ExportLine(task_id=task_id, queue=queue, archived=evicted_ms is not None, evicted_at=evicted, record=record)


async def export(queue: Queue, flt: DeadFilter | None = None, archived: bool = False) -> AsyncIterator[ExportLine]:
    """Every dead task matching ``flt``, newest first; with ``archived``, then the archive's."""
    flt = flt or DeadFilter()
    start = 0
    while True:
        ids = await queue.dead_ids(start, SCAN_CHUNK)
        for task_id, fields in zip(ids, await queue.records(ids), strict=True):
            if fields and flt.matches(fields.get("type", ""), fields.get("reason", "")):
                yield _line(queue.name, task_id, fields)
        if len(ids) < SCAN_CHUNK:
            break
        start += len(ids)  # a task requeued meanwhile shifts the list: at worst one is read twice
    if not archived:
        return
    before = "+"
    while True:
        entries = await queue.dead_archived(before, SCAN_CHUNK)
        for _, entry in entries:
            fields = entry["fields"]
            if flt.matches(fields.get("type", ""), fields.get("reason", "")):
                yield _line(queue.name, entry["task_id"], fields, entry["evicted_at"])
        if len(entries) < SCAN_CHUNK:
            return
        before = entries[-1][0]


def encode(line: ExportLine) -> bytes:
    """One line of an export file, newline included."""
    return orjson.dumps(line) + b"\n"


def parse(lines: Iterable[bytes], default_queue: str | None) -> dict[str, list[tuple[str, list[str]]]]:
    """Check a whole export file and group its tasks by queue, as dead_import takes them.

    ``default_queue`` overrides each line's queue when given. Raises InvalidTask naming
    the first bad line, before anything is written.
    """
    by_queue: dict[str, list[tuple[str, list[str]]]] = {}
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            task_id, queue, fields = _parse_line(orjson.loads(raw), default_queue)
        except (orjson.JSONDecodeError, InvalidTask, ConfigError) as exc:
            raise InvalidTask(f"line {n}: {exc}") from None
        by_queue.setdefault(queue, []).append((task_id, fields))
    return by_queue


def _parse_line(line: Any, default_queue: str | None) -> tuple[str, str, list[str]]:
    if not isinstance(line, dict) or not isinstance(line.get("record"), dict):
        raise InvalidTask("not a reliq export line: expected an object with 'task_id' and 'record'")
    task_id, record = line.get("task_id"), line["record"]
    if (not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_ID_LEN or any(c.isspace() for c in task_id)
            or task_id.startswith("@")):  # '@...' stands for keys in the scripts' lists (docs/flow-control.md)
        raise InvalidTask(f"'task_id' must be 1 to {MAX_ID_LEN} characters without spaces, not starting with '@'")
    queue = check_queue_name(default_queue or line.get("queue"))
    if not isinstance(record.get("type"), str) or not record["type"]:
        raise InvalidTask("'record.type' must be a non-empty string")
    fields: list[str] = []
    for name, value in record.items():
        if name == "state":
            continue  # an import is always dead-lettered
        if name in JSON_FIELDS:
            fields += [name, orjson.dumps(value).decode()]
        elif isinstance(value, str):
            fields += [name, value]
        else:
            raise InvalidTask(f"'record.{name}' must be a string, as the export wrote it")
    return task_id, queue, fields


async def import_tasks(queue: Queue, tasks: list[tuple[str, list[str]]]) -> list[str]:
    """Create the tasks whose ids do not exist yet in ``queue``; return the ids created."""
    created: list[str] = []
    for i in range(0, len(tasks), IMPORT_BATCH):
        created += await queue.dead_import(tasks[i : i + IMPORT_BATCH])
    return created
