"""The formats crossing Python and Lua (reliq/formats.py): both sides read them alike."""

from __future__ import annotations

import inspect
import re
from importlib import resources
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from reliq import calls, errors, formats, priorities, schedules, scripts
from reliq import queue as queue_module
from reliq.formats import (
    CLAIM_FIELDS,
    ENQUEUE_FIELDS,
    SETTLE_FIELDS,
    Code,
    DeadReason,
    Metric,
    RunOutcome,
    TaskState,
    metric,
    split_metric,
)
from reliq.histogram import bucket
from reliq.queue import Claimed, Outcome, Queue, make_spec
from reliq.settings import Settings
from reliq.worker.periodic_enqueuer import PeriodicEnqueuer

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_claim_reply_carries_every_claim_field_by_its_name(queue: Queue, redis: Redis) -> None:
    # Each field holds a value no other does, so a field read into the wrong place shows.
    [(task_id, _)] = await queue.enqueue_specs([make_spec("typed", {"p": 1}, max_retries=7, timeout=11,
                                                          key="customer-42")])
    distinct = {"attempts": "2", "failures": "4", "crashes": "5", "queued_at": "1234567",
                "opts": f"7|11|{TRACE}|5:typed:k|x"}
    await redis.hset(queue.keys.task(task_id), mapping=distinct)
    [task], _ = await queue.claim("w1", 10)
    record = {k.decode(): v for k, v in (await redis.hgetall(queue.keys.task(task_id))).items()}
    assert task.id == task_id
    # the lock's name may hold a '|'
    assert (task.max_retries, task.timeout_ms, task.trace, task.unique) == (7, 11, TRACE, "5:typed:k|x")
    for name in CLAIM_FIELDS:
        if name == "opts":
            continue
        value = getattr(task, name)
        expected = record[name] if name == "payload" else record[name].decode()
        assert (value if isinstance(value, bytes | str) else str(value)) == expected, name
    assert task.attempts == 3  # the claim's own attempt, as written back to the record


async def test_a_record_from_before_opts_runs_with_its_options_and_is_rewritten(queue: Queue, redis: Redis) -> None:
    # A task enqueued by the older reliq (timeout_ms, trace and unique as fields of their
    # own) and still pending when the queue is upgraded in place.
    [(task_id, _)] = await queue.enqueue_specs([make_spec("typed", {"p": 1})])
    key = queue.keys.task(task_id)
    await redis.hdel(key, "opts")
    await redis.hset(key, mapping={"max_retries": "6", "timeout_ms": "2500", "trace": TRACE, "unique": "5:typed:k"})
    assert (await queue.get(task_id))["max_retries"] == 6  # GET /task reads it before any claim
    [task], _ = await queue.claim("w1", 10)
    assert (task.id, task.max_retries, task.timeout_ms, task.trace, task.unique, task.payload) == (
        task_id, 6, 2500, TRACE, "5:typed:k", b'{"p":1}')
    record = await redis.hgetall(key)
    assert record[b"opts"] == f"6|2500|{TRACE}|5:typed:k".encode() and record[b"unique"] == b"5:typed:k"
    assert b"trace" not in record
    assert (await queue.get(task_id))["max_retries"] == 6
    assert await queue.settle("w1", [Outcome(task, "ok", "", 1)]) == (1, 0)
    assert (await queue.get(task_id))["state"] == "succeeded"


def test_opts_split_back_into_what_made_them() -> None:
    opts = "4" + formats.opts_prefix(1500, TRACE) + "9:t|pe:k"  # as enqueue.lua completes it
    assert formats.split_opts(opts.encode()) == (4, 1500, TRACE, "9:t|pe:k")
    assert formats.split_opts(("0" + formats.opts_prefix(None, "")).encode()) == (0, None, "", "")


def test_enqueue_batch_writes_each_enqueue_field_where_the_script_reads_it() -> None:
    spec = make_spec("typed", {"p": 1}, max_retries=7, timeout=11, delay=5, idempotency_key="k", key="customer-42",
                     run_at="2030-01-02T03:04:05Z", trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                     priority=7, unique_key="uk")
    flat = orjson.loads(calls.enqueue_batch([spec, make_spec("typed")]))
    assert len(flat) == 2 * len(ENQUEUE_FIELDS)
    row, plain = flat[:len(ENQUEUE_FIELDS)], flat[len(ENQUEUE_FIELDS):]
    for name, value in zip(ENQUEUE_FIELDS, row, strict=True):
        if name == "unique":  # unique and unique_key in one field: '' (the type's), '-', '#' or '=' + the key
            assert value == "=uk"
            continue
        if name == "opts":  # formats.OPTS_FIELDS but the lock's name, which the script appends
            assert value == f"|11000|{spec.trace}|"
            continue
        expected = getattr(spec, name)
        assert value == (expected.decode() if isinstance(expected, bytes) else str(expected)), name
    assert plain[-1] == ""  # the default priority


async def test_settle_sends_each_settle_field_where_the_script_reads_it(queue: Queue) -> None:
    task = Claimed("id1", "typed", b"null", attempts=1, failures=0, max_retries=7, crashes=0, timeout_ms=None,
                   queued_at=1_000, started_at=1_250, queue=queue.name, key="customer-42")
    sent: list[Any] = []

    async def script(name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        sent.append(args)
        return [1, 0]

    queue._scripts = script  # type: ignore[assignment]
    await queue.settle("w1", [Outcome(task, "error", "boom", run_ms=900, retry_delay_ms=4_000)])
    row = orjson.loads(sent[0][1])
    expected = {"id": "id1", "type": "typed", "max_retries": 7, "outcome": "error", "text": "boom",
                "retry_delay_ms": 4_000, "wait_ms": 250, "run_ms": 900, "wait_bucket": bucket(250),
                "run_bucket": bucket(900), "unique": "", "key": "customer-42", "small": "1"}
    assert dict(zip(SETTLE_FIELDS, row, strict=True)) == expected


def test_a_format_line_becomes_the_lua_locals_the_script_reads() -> None:
    claim = scripts.source("claim")
    assert "--- @format" not in claim
    assert formats.lua_locals("CLAIM_FIELDS", {"CLAIM_FIELDS"}) in claim  # the list, for its HMGET
    # the positions it reads, alone
    assert "local TYPE, ATTEMPTS, CRASHES, QUEUED_AT, OPTS, KEY = 1, 3, 5, 6, 7, 8\n" in claim


def test_an_unknown_format_or_a_local_declared_twice_fails_at_load() -> None:
    with pytest.raises(ValueError, match="no format 'NOPE'"):
        scripts._with_formats("--- @format NOPE\nreturn 1\n")
    with pytest.raises(ValueError, match="CRASHES"):
        scripts._with_formats("--- @format CLAIM_FIELDS\nlocal CRASHES = 0\nreturn 1\n")


@pytest.mark.parametrize(("kind", "parts", "field"), [
    (Metric.RUNS, ("a|b", "ok"), "t|a|b|ok"), (Metric.WAIT, ("a", 3), "w|a|3"), (Metric.WAIT_SUM, ("a|b",), "ws|a|b"),
    (Metric.RUN, ("a", 0), "r|a|0"), (Metric.RUN_SUM, ("a",), "rs|a"), (Metric.BLOCKS, (4,), "lb|4"),
    (Metric.BLOCKED_SUM, (), "lbs"),
])
def test_every_metric_kind_splits_back_into_what_made_it(kind: Metric, parts: tuple[object, ...], field: str) -> None:
    assert metric(kind, *parts) == field
    name, task_type, last = split_metric(field)
    assert name == kind
    assert [p for p in (task_type, last) if p] == [str(p) for p in parts]


def test_settle_lua_names_the_metric_kinds_of_formats() -> None:
    settle = scripts.source("settle")
    assert "local METRIC_RUNS, METRIC_WAIT, METRIC_WAIT_SUM, METRIC_RUN, METRIC_RUN_SUM = 't', 'w', 'ws', 'r', 'rs'\n" \
        in settle
    assert "'t|'" not in settle and "'rs|'" not in settle


def _lua_code() -> str:
    """Every script's code, comments left out."""
    lua = resources.files("reliq") / "lua"
    texts = [f.read_text() for f in lua.iterdir() if f.name.endswith(".lua")]
    return "\n".join(re.sub(r"--.*$", "", t, flags=re.MULTILINE) for t in texts)


def test_the_states_the_scripts_write_and_compare_are_the_task_states() -> None:
    code = _lua_code()
    # HSET's 'state', '<state>' pairs (an HMGET's field list such as 'state', 'type' is no write)
    written = set(re.findall(r"'HSET'[^)]*?'state',\s*'(\w+)'", code))
    compared = set(re.findall(r"state'?\)?\s*[=~]=\s*'(\w+)'", code))
    assert written == set(TaskState)  # each state is reached by some script, and no other
    assert compared and compared <= set(TaskState)


def test_the_outcomes_settle_lua_tells_apart_are_run_outcomes_and_each_death_has_its_reason() -> None:
    settle = re.sub(r"--.*$", "", (resources.files("reliq") / "lua" / "settle.lua").read_text(), flags=re.MULTILINE)
    assert set(re.findall(r"outcome == '(\w+)'", settle)) <= set(RunOutcome)
    # settle.lua dead-letters with the outcome as the reason (what neither succeeds, snoozes
    # nor ends cancelled); reap.lua with its own literal
    assert {o.value for o in RunOutcome} - {"ok", "snooze", "cancelled", "rate_limited"} <= set(DeadReason)
    assert set(re.findall(r"dead_letter\([^)]*?'(\w+)'", _lua_code())) <= set(DeadReason)


@pytest.mark.parametrize("code", list(Code))
def test_each_refusal_code_is_an_exception_and_nothing_else_is(code: Code) -> None:
    if code < 0:
        assert isinstance(errors.script_error(code, queue="q", task_id="t", state="processing"), errors.ReliqError)
    else:
        with pytest.raises(ValueError, match="not a refusal"):
            errors.script_error(code)


def _top_level_returns() -> dict[str, list[str]]:
    """What each script's own body returns (its lines at column 0, comments left out), by script."""
    lua = resources.files("reliq") / "lua"
    out: dict[str, list[str]] = {}
    for f in lua.iterdir():
        if f.name.endswith(".lua") and f.name != "_lib.lua":
            code = re.sub(r"--.*$", "", f.read_text(), flags=re.MULTILINE)
            out[f.name] = re.findall(r"^(?:if .* then )?return (.*?)(?: end)?$", code, flags=re.MULTILINE)
    return out


def test_no_script_answers_with_a_word_or_a_negative_number_of_its_own() -> None:
    # An outcome is a member of a formats enum (CODE_*, FIRE_*, PUT_*...), generated into the
    # script; a refusal a negative Code, an exception of reliq/errors.py. A word or a -1 in a
    # reply would be a format spelled on one side only.
    returns = _top_level_returns()
    assert returns["schedule_fire.lua"] and returns["schedule_pause.lua"]
    spelled = {name: [r for r in rs if re.search(r"'\w+'|(?<![\w\]])-\d", re.sub(r"redis\.call\(.*\)", "", r))]
               for name, rs in returns.items()}
    assert {name: rs for name, rs in spelled.items() if rs} == {}


@pytest.mark.parametrize(("script", "enum"), [("schedule_fire", formats.Fire), ("schedule_put", formats.Put)])
def test_the_schedule_scripts_answer_every_outcome_of_their_enum_and_no_other(script: str, enum: type[Any]) -> None:
    body = (resources.files("reliq") / "lua" / f"{script}.lua").read_text()
    prefix = "FIRE" if enum is formats.Fire else "PUT"
    answered = set(re.findall(rf"\b{prefix}_(\w+)", re.sub(r"--.*$", "", body, flags=re.MULTILINE)))
    assert answered == {m.name for m in enum}


async def test_a_limits_value_is_the_limit_fields_joined_by_the_separator(queue: Queue, redis: Redis) -> None:
    await queue.write_limits("set", {"typed": {"rate": [50, 1000, 3], "key_concurrency": 1, "ordered": True}})
    raw = (await redis.hget(queue.keys.limits, "typed")).decode()
    assert dict(zip(formats.LIMIT_FIELDS, map(int, raw.split(formats.SEP)), strict=True)) == {
        "rate_count": 50, "rate_period_ms": 1000, "rate_burst": 3, "key_concurrency": 1, "ordered": 1}
    assert re.match(formats.LIMIT_PATTERN.replace("%d", r"\d"), raw)  # the pattern the claim matches it with


def test_the_separator_and_the_marks_need_no_escaping_in_a_lua_pattern() -> None:
    magic = "^$()%.[]*+-?"
    assert formats.SEP not in magic and not set(formats.PAUSED_MARK) & set(magic)
    assert formats.PAUSED_MARK[0] != formats.RESUMING_MARK[0]


def test_the_groups_fields_the_scripts_spell_are_group_fields() -> None:
    spelled = set(re.findall(r"G\.groups, '([^']*)'", _lua_code()))
    assert spelled and spelled <= {f.value for f in formats.GroupField}


def test_every_counter_a_script_increments_is_a_stats_counter() -> None:
    code = _lua_code()
    counted = set(re.findall(r"'HINCRBY', (?:STATS|stats|stats_key), '(\w+)'", code))
    counted |= set(re.findall(r"add\(counts, '(\w+)'", scripts.source("settle")))
    assert len(counted) > 10 and counted <= set(queue_module.COUNTERS)


def test_the_priorities_the_scripts_know_are_those_of_priorities_py() -> None:
    lib = (resources.files("reliq") / "lua" / "_lib.lua").read_text()
    assert f"local DEFAULT_PRIORITY = '{priorities.DEFAULT}'" in lib
    others = re.search(r"local OTHER_PRIORITIES = \{(.*)\}", lib)
    assert others
    assert [int(p.strip(" '")) for p in others.group(1).split(",")] == sorted(priorities.OTHERS, reverse=True)
    assert f"(p - {priorities.DEFAULT}) * step" in scripts.source("claim")


async def test_a_pause_reads_back_as_the_scripts_wrote_it(queue: Queue) -> None:
    now, since = await queue.pause("typed", "ops")
    assert now and not (await queue.pause("typed", "someone else"))[0]
    pause = (await queue.paused())["types"]["typed"]
    assert (pause["since_ms"], pause["by"], pause["resuming"]) == (since, "ops", False)
    assert await queue.resume("typed") == (True, 0)
    assert await queue.resume("typed") == (False, 0)


def test_a_set_format_becomes_a_lua_table_of_its_members_and_the_end_states_are_read_from_it() -> None:
    assert formats.lua_locals("END_STATES") == \
        "local END_STATES = {['cancelled'] = true, ['dead'] = true, ['succeeded'] = true}\n"
    code = _lua_code()
    assert "ENDED" not in code and "'succeeded' or" not in code  # no second list of the end states


def test_the_cancel_modes_the_scripts_spell_are_cancel_modes() -> None:
    assert not re.search(r"'(keep|forget)'", _lua_code())
    assert calls.cancel_args("t", Settings(), forget=True)[2] == formats.CancelMode.FORGET


def test_every_field_python_reads_of_a_record_or_a_schedule_is_one_a_script_spells() -> None:
    # Python reads a task's and a schedule's hash by field name: a field renamed in a script
    # and not here would read as missing, silently. Each name must appear in some script.
    spelled = set()
    for name in scripts.NAMES:
        spelled |= set(re.findall(r"'(\w+)'", re.sub(r"--.*$", "", scripts.source(name), flags=re.MULTILINE)))
    readers = [queue_module.decode_record, schedules.view, PeriodicEnqueuer.run_once, PeriodicEnqueuer.declare]
    read = {field for fn in readers
            for field in re.findall(r"""\b(?:f|fields)(?:\.get\(|\[)"(\w+)\"""", inspect.getsource(fn))}
    assert len(read) > 25
    assert sorted(read - spelled) == []
