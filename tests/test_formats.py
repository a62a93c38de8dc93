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
    CLAIM_HEAD,
    CLAIMED,
    ENQUEUE_FIELDS,
    ENQUEUE_REST,
    SEP,
    SETTLE_FIELDS,
    SETTLE_MORE,
    SETTLE_OK,
    Code,
    DeadReason,
    Metric,
    RecordFormat,
    RunOutcome,
    TaskState,
    make_body,
    metric,
    split_claimed,
    split_metric,
)
from reliq.histogram import bucket
from reliq.queue import Claimed, Outcome, Queue, make_spec
from reliq.settings import Settings
from reliq.worker.periodic_enqueuer import PeriodicEnqueuer

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _claim_replies(queue: Queue) -> list[list[Any]]:
    """claim.lua's raw replies to ``queue``'s claims from now on (CLAIM_HEAD values, then a string a task)."""
    replies: list[list[Any]] = []
    real = queue._scripts

    async def spy(name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        reply = await real(name, keys, args, client)
        if name == "claim":
            replies.append(reply)
        return reply

    queue._scripts = spy  # type: ignore[assignment]
    return replies


#: What split_claimed gives of a task, by name: CLAIMED, then the type, the key and the body.
CLAIMED_PARTS = (*CLAIMED, "type", "key", "body")


async def test_claim_reply_carries_every_claim_field_by_its_name(queue: Queue, redis: Redis) -> None:
    # Each field holds a value no other does, so a field read into the wrong place shows; the
    # type and the key hold the separator, the payload a ':' and the lock's name both.
    [(task_id, _)] = await queue.enqueue_specs([make_spec("ty|ped", {"p": 1}, max_retries=7, timeout=11,
                                                          key="customer|42")])
    key = queue.keys.task(task_id)
    body = make_body(f"7|11|{TRACE}|5:typed:k|x", b'{"p":"1:2|3"}')
    await redis.hset(key, mapping={"attempts": "2", "failures": "4", "crashes": "5", "queued_at": "1234567",
                                   "body": body})
    replies = _claim_replies(queue)
    [task], _ = await queue.claim("w1", 10)
    [[raw]] = [reply[CLAIM_HEAD:] for reply in replies]
    claimed = dict(zip(CLAIMED_PARTS, split_claimed(raw), strict=True))
    assert claimed == {"id": task_id.encode(), "attempts": b"3", "queued_at": b"1234567", "failures": b"4",
                       "crashes": b"5", "record": b"", "type": b"ty|ped", "key": b"customer|42", "body": body}
    record = {k.decode(): v for k, v in (await redis.hgetall(key)).items()}
    for name in CLAIM_FIELDS:  # what the claim read, as the record holds it (attempts: as it wrote it back)
        if name != "state":
            assert claimed[name] == record[name], name
    assert record["state"] == b"processing"
    assert (task.id, task.type, task.key, task.payload, task.attempts, task.failures, task.crashes,
            task.queued_at) == (task_id, "ty|ped", "customer|42", b'{"p":"1:2|3"}', 3, 4, 5, 1234567)
    # the body's opts, the lock's name last: it may hold a '|'
    assert (task.max_retries, task.timeout_ms, task.trace, task.unique) == (7, 11, TRACE, "5:typed:k|x")
    assert task.record_format == RecordFormat.BODY


async def test_a_claim_reply_leaves_counts_that_are_0_blank_and_says_a_record_of_format_1(
        queue: Queue, redis: Redis) -> None:
    fresh = await queue.enqueue("plain", [1])  # a new queue: format 2, its counts absent while 0
    assert await queue.upgrade_records(RecordFormat.FIELDS) == []  # as on a queue in use before format 2
    old = await queue.enqueue("plain", [2])
    fields_before = await redis.hgetall(queue.keys.task(old))
    assert b"body" not in fields_before and fields_before[b"attempts"] == b"0"
    replies = _claim_replies(queue)
    tasks, _ = await queue.claim("w1", 10)
    [reply] = replies
    got = [dict(zip(CLAIMED_PARTS, split_claimed(raw), strict=True)) for raw in reply[CLAIM_HEAD:]]
    queued = [(await redis.hget(queue.keys.task(i), "queued_at")) for i in (fresh, old)]
    retries = str(queue.settings.max_retries)
    assert got == [
        {"id": fresh.encode(), "attempts": b"1", "queued_at": queued[0], "failures": b"", "crashes": b"",
         "record": b"", "type": b"plain", "key": b"", "body": make_body(f"{retries}|||", b"[1]")},
        # format 1: the body it stands for, made of its fields; its counts were never read (attempts 0)
        {"id": old.encode(), "attempts": b"1", "queued_at": queued[1], "failures": b"", "crashes": b"",
         "record": b"1", "type": b"plain", "key": b"", "body": make_body(f"{retries}|||", b"[2]")}]
    assert [(t.id, t.failures, t.crashes, t.record_format) for t in tasks] == [
        (fresh, 0, 0, RecordFormat.BODY), (old, 0, 0, RecordFormat.FIELDS)]
    assert b"body" not in await redis.hgetall(queue.keys.task(old))  # it keeps its format


async def test_a_record_from_before_opts_runs_with_its_options_and_keeps_its_format(
        queue: Queue, redis: Redis) -> None:
    # A task enqueued by the older reliq (timeout_ms, trace and unique as fields of their
    # own, no opts: record format 1) and still pending when the queue is upgraded in place.
    assert await queue.upgrade_records(RecordFormat.FIELDS) == []
    [(task_id, _)] = await queue.enqueue_specs([make_spec("typed", {"p": 1})])
    key = queue.keys.task(task_id)
    await redis.hdel(key, "opts")
    await redis.hset(key, mapping={"max_retries": "6", "timeout_ms": "2500", "trace": TRACE, "unique": "5:typed:k"})
    before = await redis.hgetall(key)
    assert b"body" not in before and before[b"payload"] == b'{"p":1}'
    assert (await queue.get(task_id))["max_retries"] == 6  # GET /task reads it before any claim
    [task], _ = await queue.claim("w1", 10)
    assert (task.id, task.max_retries, task.timeout_ms, task.trace, task.unique, task.payload) == (
        task_id, 6, 2500, TRACE, "5:typed:k", b'{"p":1}')
    assert task.record_format == RecordFormat.FIELDS  # so that its settle writes format 1 back
    record = await redis.hgetall(key)
    # not rewritten: the claim gave it its body in the reply alone, and wrote what every claim writes
    assert record == {**before, b"state": b"processing", b"attempts": b"1", b"worker": b"w1",
                      b"started_at": record[b"started_at"]}
    assert (await queue.get(task_id))["max_retries"] == 6
    assert await queue.settle("w1", [Outcome(task, "ok", "", 1)]) == (1, 0)
    done = await redis.hgetall(key)
    assert done[b"state"] == b"succeeded"
    # a format 1 success drops payload, opts and max_retries as before, and writes no body
    assert not {b"payload", b"opts", b"max_retries", b"body", b"unique"} & set(done)


def test_opts_and_a_body_split_back_into_what_made_them() -> None:
    opts = formats.opts_prefix(4, 1500, TRACE) + "9:t|pé:k"  # as enqueue.lua completes it: the lock's name last
    assert formats.split_opts(opts.encode()) == (4, 1500, TRACE, "9:t|pé:k")
    assert formats.split_opts(formats.opts_prefix(0, None, "").encode()) == (0, None, "", "")
    payload = b'{"a":"12:|x"}'
    body = make_body(opts, payload)
    assert body.startswith(b"%d:" % len(opts.encode()))  # the length in bytes, as Lua's # counts
    assert formats.split_body(body) == (payload, 4, 1500, TRACE, "9:t|pé:k")
    # either format reads as the same task
    fields = {"type": b"t", "payload": payload, "opts": opts.encode(), "max_retries": b"4"}
    assert formats.payload_of({"type": b"t", "body": body}) == formats.payload_of(fields) == (payload, 4)
    assert formats.retries_of({"body": body.decode()}) == formats.retries_of({"max_retries": "4"}) == 4
    assert formats.payload_of({"type": b"t", "body": b""}) == (None, None)  # succeeded: the body blanked
    assert formats.as_format_1({"type": "t", "body": body.decode()}) == {k: v.decode() for k, v in fields.items()}
    assert formats.as_format_1({"type": "t", "body": ""}) == {"type": "t"}


async def test_the_scripts_split_a_body_as_python_makes_it(redis: Redis) -> None:
    opts = formats.opts_prefix(4, None, TRACE) + "9:t|pé:k"
    payload = '{"a":"12:|é"}'.encode()
    code = "return {split_body(ARGV[1])}"
    lib = (resources.files("reliq") / "lua" / "_lib.lua").read_text()
    lua = scripts._with_formats(scripts._needed(lib, code) + "\n" + code)
    assert await redis.eval(lua, 0, make_body(opts, payload)) == [opts.encode(), payload]


def test_enqueue_batch_writes_each_enqueue_field_where_the_script_reads_it() -> None:
    spec = make_spec("typed", {"p": 1}, max_retries=7, timeout=11, delay=5, idempotency_key="k", key="customer-42",
                     run_at="2030-01-02T03:04:05Z", trace=TRACE, priority=7, unique_key="uk")
    delayed, plain = make_spec("typed", delay=1), make_spec("typed")
    flat = orjson.loads(calls.enqueue_batch([spec, delayed, plain], 3))
    width = len(ENQUEUE_FIELDS)
    assert len(flat) == 3 * width
    rows = [dict(zip(ENQUEUE_FIELDS, flat[o:o + width], strict=True)) for o in range(0, len(flat), width)]
    # the body's opts: OPTS_FIELDS but the lock's name, which the script appends
    assert rows[0] == {"id": spec.id, "type": "typed", "body": make_body(f"7|11000|{TRACE}|", b'{"p":1}').decode(),
                       "rest": rows[0]["rest"]}
    assert dict(zip(ENQUEUE_REST, rows[0]["rest"], strict=True)) == {
        "retries": "1", "delay_ms": "5000", "idempotency_key": "k", "run_at_ms": str(spec.run_at_ms),
        "unique": "=uk",  # unique and unique_key in one field: '' (the type's), '-', '#' or '=' + the key
        "key": "customer-42", "priority": "7"}
    # no max_retries given: the queue's in the body, and '' for retries (the type's default may win)
    assert rows[1]["body"] == make_body("3|||", b"null").decode()
    assert dict(zip(ENQUEUE_REST, rows[1]["rest"], strict=True)) == {
        "retries": "", "delay_ms": "1000", "idempotency_key": "", "run_at_ms": "0", "unique": "", "key": "",
        "priority": ""}  # the default priority
    # nothing more set: no rest (the plain path)
    assert rows[2] == {"id": plain.id, "type": "typed", "body": make_body("3|||", b"null").decode(), "rest": ""}
    enqueue = scripts.source("enqueue")
    assert formats.lua_locals("ENQUEUE_FIELDS") in enqueue and formats.lua_locals("ENQUEUE_REST", {
        f.upper() for f in ENQUEUE_REST}) in enqueue
    for name in ENQUEUE_FIELDS:  # each read at its position in the flat batch
        assert f"b[o + {name.upper()}]" in enqueue, name
    for name in ENQUEUE_REST:
        assert f"r[{name.upper()}]" in enqueue, name
    # what the script takes for a rest of '': the values a task that sets nothing would send
    [plain_rest] = re.findall(r"^local PLAIN = \{(.*?)\}", enqueue, re.MULTILINE)
    assert dict(zip(ENQUEUE_REST, re.findall(r"'([^']*)'", plain_rest), strict=True)) == {
        **dict(zip(ENQUEUE_REST, rows[1]["rest"], strict=True)), "delay_ms": "0"}


async def test_settle_sends_each_settle_field_where_the_script_reads_it(queue: Queue) -> None:
    def claimed(task_id: str, payload: bytes = b"null", **kw: Any) -> Claimed:
        return Claimed(task_id, "typed", payload, attempts=1, failures=0, max_retries=7, crashes=0, timeout_ms=None,
                       queued_at=1_000, started_at=1_250, queue=queue.name, **kw)

    sent: list[Any] = []

    async def script(name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        sent.append(args)
        return [1, 0]

    queue._scripts = script  # type: ignore[assignment]
    await queue.settle("w1", [
        Outcome(claimed("id1", key="customer-42"), "error", "boom", run_ms=900, retry_delay_ms=4_000),
        Outcome(claimed("id2"), "ok", "", run_ms=5),  # a plain success: apart
        Outcome(claimed("id3", record_format=RecordFormat.FIELDS), "ok", "1", run_ms=5),
        Outcome(claimed("id4", b'"' + b"x" * formats.LISTPACK_VALUE + b'"'), "ok", "", run_ms=5),  # Redis tells
        Outcome(claimed("id5", unique="5:typed:k"), "ok", "", run_ms=5)])
    [args] = sent
    flat, width = orjson.loads(args[1]), len(SETTLE_FIELDS)
    rows = [dict(zip(SETTLE_FIELDS, flat[o:o + width], strict=True)) for o in range(0, len(flat), width)]
    assert dict(zip(SETTLE_MORE, rows[0].pop("more").split(SEP), strict=True)) == {
        "max_retries": "7", "retry_delay_ms": "4000", "wait_ms": "250", "run_ms": "900",
        "wait_bucket": str(bucket(250)), "run_bucket": str(bucket(900))}
    assert rows[0] == {"id": "id1", "type": "typed", "text": "boom", "outcome": "error", "unique": "",
                       "key": "customer-42", "record": "s"}
    assert [(r["id"], r["outcome"], r["unique"], r["record"]) for r in rows[1:]] == [
        ("id3", "ok", "", "1"), ("id4", "ok", "", "2"), ("id5", "ok", "5:typed:k", "s")]
    assert dict(zip(SETTLE_OK, orjson.loads(args[6]), strict=True)) == {
        "id": "id2", "type": "typed", "text": "", "more": SEP.join(["7", "0", "250", "5", str(bucket(250)),
                                                                     str(bucket(5))])}
    settle = scripts.source("settle")
    for name in SETTLE_FIELDS:  # each read at its position in the flat batch
        assert f"batch[o + {name.upper()}]" in settle, name
    # the plain successes: the first values of SETTLE_FIELDS, stepped through by MORE, the last one's position
    assert SETTLE_FIELDS[:len(SETTLE_OK)] == SETTLE_OK and SETTLE_OK[-1] == "more"
    for name in SETTLE_OK:
        assert f"succeeded[o + {name.upper()}]" in settle, name
    assert "for o = 0, #succeeded - 1, MORE do" in settle
    for name in SETTLE_MORE:  # each split out of more by its position
        assert re.search(rf"\[{name.upper()}\]", settle), name


def test_a_format_line_becomes_the_lua_locals_the_script_reads() -> None:
    claim = scripts.source("claim")
    assert "--- @format" not in claim
    assert formats.lua_locals("CLAIM_FIELDS", {"CLAIM_FIELDS"}) in claim  # the list, for its HMGET
    # the positions it reads (all of them, now: the key is set by the claim, not read)
    assert "local TYPE, BODY, ATTEMPTS, QUEUED_AT, STATE, FAILURES, CRASHES, KEY = 1, 2, 3, 4, 5, 6, 7, 8\n" in claim
    # of an enum, the members it names alone
    assert "local RECORD_FIELDS = 1\n" in claim and "RECORD_BODY" not in claim
    assert "local RECORD_BODY = 2\n" in scripts.source("enqueue")
    # and of _lib.lua, the helpers it uses alone (scripts._needed)
    assert "local function split_body(" in scripts.source("enqueue") and "local function split_body(" not in claim


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
