"""The producer API described in OpenAPI 3.1 (served at GET /openapi.json).

The document is built for the server's configuration: with a token set it declares
bearer auth and the 401s, without one it declares neither. A test checks that every
route of the API app is described here and that responses match their schemas, and
schemathesis (tests/test_contract.py) fuzzes a real server against it, so this stays
true as the API changes.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from reliq import __version__, priorities, schedules
from reliq.formats import CANCELLABLE, RUN_FIELDS, DeadReason, RunOutcome, Runs, TaskState
from reliq.limits import MAX_KEY_LEN
from reliq.queue import (
    MAX_DELAY_S,
    MAX_RETRIES_LIMIT,
    MAX_TIMEOUT_S,
    MAX_TYPE_LEN,
    MAX_UNIQUE_KEY,
    RFC3339,
    STATES,
)
from reliq.settings import QUEUE_PATTERN, WHITESPACE
from reliq.waiting import MAX_WAIT_S

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field: null means the same as leaving it out (the default)."""
    return {**schema, "type": [schema["type"], "null"]}


_TASK_FIELDS: dict[str, Any] = {
    "type": {"type": "string", "minLength": 1, "maxLength": MAX_TYPE_LEN,
             "pattern": "[^" + WHITESPACE.encode("unicode_escape").decode() + "]",
             "description": "Handler name (not only whitespace)"},
    "payload": {"description": "Any JSON value, passed to the handler"},
    "max_retries": _or_null({"type": "integer", "minimum": 0, "maximum": MAX_RETRIES_LIMIT}),
    "timeout_s": _or_null({"type": "number", "minimum": 0.001, "maximum": MAX_TIMEOUT_S}),
    "delay_s": _or_null({"type": "number", "minimum": 0, "maximum": MAX_DELAY_S}),
    "run_at": _or_null({"type": "string", "format": "date-time", "pattern": RFC3339,
                        "description": "RFC 3339, with a time zone; a time in the past runs now"}),
    "idempotency_key": _or_null({"type": "string", "minLength": 1, "maxLength": 200}),
    "priority": _or_null({"type": "integer", "minimum": priorities.LOWEST, "maximum": priorities.HIGHEST,
                          "description": f"Higher runs first, FIFO within a priority, with aging "
                                         f"(docs/priorities.md); default {priorities.DEFAULT}"}),
    "unique": _or_null({"type": "boolean", "description": "While a task of this type and unique key is pending, "
                        "scheduled, retrying or running, answer 200 with its id instead of enqueuing; default: "
                        "the type's (@reliq.task(unique=True))"}),
    "unique_key": _or_null({"type": "string", "minLength": 1, "maxLength": MAX_UNIQUE_KEY,
                            "description": "The key of a unique task (default: a hash of its payload); "
                                           "makes the task unique"}),
    "key": _or_null({"type": "string", "minLength": 1, "maxLength": MAX_KEY_LEN, "pattern": "^[^\\x00-\\x1f]*$",
                     "description": "A customer, a merchant, an endpoint: its type's key concurrency applies, "
                                    "and keys take turns (docs/flow-control.md)"}),
    "queue": _or_null({"type": "string", "pattern": QUEUE_PATTERN, "description": "Default: the server's queue"}),
}
#: A unique_key makes a task unique: it cannot come with "unique": false.
_KEY_NOT_WITH_UNIQUE_FALSE = {"not": {"required": ["unique", "unique_key"],
                                      "properties": {"unique": {"const": False}, "unique_key": {"type": "string"}}}}
#: A task inside a batch: the batch names its queue once, beside "tasks", so a task may not.
_BATCH_TASK: dict[str, Any] = {
    "type": "object", "required": ["type"], **_KEY_NOT_WITH_UNIQUE_FALSE,
    "properties": {**{k: v for k, v in _TASK_FIELDS.items() if k != "queue"},
                   "queue": {"not": {}, "description": "Not here: a batch goes to one queue, named beside tasks"}},
}

_SCHEMAS: dict[str, Any] = {
    "NewTask": {
        "type": "object",
        "required": ["type"],
        **_KEY_NOT_WITH_UNIQUE_FALSE,
        "properties": {**_TASK_FIELDS, "durability": {"enum": ["memory", "replicated"]}},
    },
    "NewTasks": {
        "oneOf": [
            {"type": "array", "items": _BATCH_TASK, "minItems": 1, "maxItems": 1000},
            {"type": "object", "required": ["tasks"], "properties": {
                "tasks": {"type": "array", "items": _BATCH_TASK, "minItems": 1, "maxItems": 1000},
                "queue": _TASK_FIELDS["queue"],
                "durability": {"enum": ["memory", "replicated"]},
            }},
        ],
    },
    "Accepted": {
        "type": "object",
        "required": ["status", "task_id", "queue", "state", "durability"],
        "properties": {
            "status": {"enum": ["queued", "duplicate"]},
            "duplicate": {"enum": ["idempotency_key", "unique"],
                          "description": "Only with status duplicate: the earlier task with this Idempotency-Key, "
                                         "or the live one with this type and unique key, stands for it"},
            "task_id": {"type": "string"},
            "queue": {"type": "string"},
            "state": {"enum": [TaskState.PENDING, TaskState.SCHEDULED]},
            "durability": {"enum": ["memory", "replicated"]},
        },
    },
    "AcceptedBatch": {
        "type": "object",
        "required": ["status", "task_ids", "queue", "tasks"],
        "properties": {
            "status": {"const": "queued"},
            "task_ids": {"type": "array", "items": {"type": "string"}},
            "queue": {"type": "string"},
            "tasks": {"type": "array", "items": _ref("Accepted")},
        },
    },
    "Task": {
        "type": "object",
        "required": ["task_id", "type", "state", "attempts", "max_retries", "last_error", "reason",
                     "enqueued_at", "started_at", "finished_at"],
        "properties": {
            "task_id": {"type": "string"},
            "type": {"type": "string"},
            "state": {"enum": list(STATES)},
            "attempts": {"type": "integer"},
            "failures": {"type": "integer"},
            "crashes": {"type": "integer"},
            "max_retries": {"type": ["integer", "null"],
                            "description": "null once a succeeded record is compact: then payload, worker, "
                                           "last_error and reason are no longer kept either"},
            "payload": {},
            "result": {},
            "last_error": {"type": ["string", "null"]},
            "reason": {"type": ["string", "null"],
                       "description": "Why it died: error, timeout, crashed, unknown_type, permanent"},
            "worker": {"type": ["string", "null"]},
            "priority": {"type": "integer", "minimum": priorities.LOWEST, "maximum": priorities.HIGHEST},
            "key": {"type": ["string", "null"], "description": "The task's key; null without one, and once a "
                                                                "succeeded record is compact"},
            "enqueued_at": {"type": ["string", "null"], "format": "date-time"},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                         "description": "What the handler last reported (ctx.progress), written at most once a "
                                        "second; null before its first report and once it succeeded or waits "
                                        "for another attempt"},
            "progress_message": {"type": ["string", "null"]},
            "progress_at": {"type": ["string", "null"], "format": "date-time"},
            "cancel_requested_at": {"type": ["string", "null"], "format": "date-time",
                                    "description": "When a cancel was asked for while it ran; it ends cancelled "
                                                   "once its worker has stopped it"},
            "runs": {"type": "array", "maxItems": int(Runs.KEPT), "items": _ref("Run"),
                     "description": "Its last runs that did not succeed, oldest first ([] when every run so far "
                                    "succeeded); a success keeps them"},
        },
    },
    "Run": {
        "type": "object",
        "required": list(RUN_FIELDS),
        "properties": {
            "attempt": {"type": "integer", "description": "The attempt that ran"},
            "at": {"type": ["string", "null"], "format": "date-time", "description": "When it ended"},
            "worker": {"type": ["string", "null"]},
            "outcome": {"enum": [*(o.value for o in RunOutcome if o != RunOutcome.OK), DeadReason.CRASHED.value],
                        "description": "crashed: its worker died running it (found by the reaper)"},
            "error": {"type": ["string", "null"], "description": f"Cut at {int(Runs.ERROR_MAX)} bytes"},
            "state": {"enum": list(STATES), "description": "The state the run left the task in"},
        },
    },
    "Cancelled": {
        "type": "object",
        "required": ["status", "task_id", "previous_state"],
        "properties": {"status": {"const": "cancelled"}, "task_id": {"type": "string"},
                       "previous_state": {"enum": list(CANCELLABLE)}},
    },
    "Deleted": {
        "type": "object",
        "required": ["status", "task_id", "previous_state"],
        "properties": {"status": {"const": "deleted"}, "task_id": {"type": "string"},
                       "previous_state": {"enum": list(CANCELLABLE)}},
    },
    "Cancelling": {
        "type": "object",
        "required": ["status", "task_id", "previous_state"],
        "properties": {"status": {"const": "cancelling"}, "task_id": {"type": "string"},
                       "previous_state": {"const": "processing"}},
    },
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
}

_ISO_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_SCHEDULE_SCHEMAS: dict[str, Any] = {
    "ScheduleDefinition": {
        "type": "object",
        "required": ["type"],
        "additionalProperties": False,
        "description": "Either cron or every. A cron expression's validity (and that it ever fires) is checked "
                       "by the server: a 400 says what is wrong, and nothing is written.",
        "properties": {
            "type": _TASK_FIELDS["type"],
            "payload": _TASK_FIELDS["payload"],
            "cron": _or_null({"type": "string", "minLength": 1, "maxLength": 200,
                              "description": "Five fields (minute hour day month weekday), or @daily, @hourly..."}),
            "every": _or_null({"type": "number", "minimum": schedules.MIN_EVERY_S, "maximum": schedules.MAX_EVERY_S,
                               "description": "Seconds between slots, aligned on the epoch"}),
            "tz": _or_null({"type": "string", "minLength": 1, "maxLength": 100,
                            "description": "IANA time zone of a cron expression (default UTC)"}),
            "missed": _or_null({"type": "string", "enum": list(schedules.MISSED),
                                "description": "Slots missed by more than a minute: skip (default), run the newest "
                                               "once, or catch_up the newest catch_up of them"}),
            "catch_up": _or_null({"type": "integer", "minimum": 1, "maximum": schedules.MAX_CATCH_UP}),
            "max_retries": _TASK_FIELDS["max_retries"],
            "timeout_s": _TASK_FIELDS["timeout_s"],
        },
    },
    "Schedule": {
        "type": "object",
        "required": ["name", "queue", "source", "paused", "next_run", "last_slot", "last_task_id",
                     "last_task_state", "enqueued", "skipped", "triggered"],
        "properties": {
            "name": {"type": "string"}, "queue": {"type": "string"},
            "type": {"type": ["string", "null"]}, "payload": {},
            "cron": {"type": ["string", "null"]}, "every": {"type": ["number", "null"]},
            "tz": {"type": ["string", "null"]}, "missed": {"type": ["string", "null"]},
            "catch_up": {"type": ["integer", "null"]}, "max_retries": {"type": ["integer", "null"]},
            "timeout_s": {"type": ["number", "null"]},
            "source": {"enum": list(schedules.SOURCES)},
            "paused": {"type": "boolean"}, "paused_by": {"type": ["string", "null"]}, "paused_since": _ISO_OR_NULL,
            "next_run": _ISO_OR_NULL, "next_run_ms": {"type": ["integer", "null"]},
            "last_slot": _ISO_OR_NULL, "last_task_id": {"type": ["string", "null"]},
            "last_task_state": {"type": ["string", "null"]}, "last_enqueued_at": _ISO_OR_NULL,
            "enqueued": {"type": "integer"}, "skipped": {"type": "integer"}, "triggered": {"type": "integer"},
            "firing": {"type": "integer"}, "created_at": _ISO_OR_NULL, "updated_at": _ISO_OR_NULL,
            "error": {"type": ["string", "null"]},
        },
    },
    "Schedules": {
        "type": "object", "required": ["queue", "schedules"],
        "properties": {"queue": {"type": "string"}, "schedules": {"type": "array", "items": _ref("Schedule")}},
    },
    "ScheduleWritten": {
        "type": "object", "required": ["status", "schedule"],
        "properties": {"status": {"enum": ["created", "updated", "unchanged", "paused", "already paused",
                                           "resumed", "not paused"]},
                       "schedule": _ref("Schedule")},
    },
    "ScheduleDeleted": {
        "type": "object", "required": ["status", "name", "queue"],
        "properties": {"status": {"const": "deleted"}, "name": {"type": "string"}, "queue": {"type": "string"}},
    },
    "ScheduleTriggered": {
        "type": "object", "required": ["status", "task_id", "queue", "name"],
        "properties": {"status": {"const": "queued"}, "task_id": {"type": "string"}, "queue": {"type": "string"},
                       "name": {"type": "string"}},
    },
}
_SCHEMAS.update(_SCHEDULE_SCHEMAS)

#: What both ways of cancelling answer when they cannot.
_CANCEL_REFUSED = {"400": _error("Bad queue name"), "404": _error("No such task"),
                   "409": _json({"allOf": [_ref("Error"), {"required": ["state"]}]}, "Finished already")}
#: What both answer for a running task: its worker is asked to stop it.
_CANCELLING = {"202": _json(_ref("Cancelling"), "Running: its worker was asked to stop it, within about a "
                                                "second; GET (with wait) shows how it ended: cancelled, or "
                                                "succeeded had it finished first")}

#: ``?queue=``: a queue name, or empty (or absent) for the server's queue.
_QUEUE_PARAM = {"name": "queue", "in": "query", "required": False,
                "schema": {"type": "string", "pattern": "^(" + QUEUE_PATTERN[1:-1] + ")?$"},
                "description": "The task's queue (empty or absent: the server's queue)"}
_WAIT_PARAM = {"name": "wait", "in": "query", "required": False,
               "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S, "default": 0},
               "description": "Long poll: answer as soon as the task is succeeded, dead or cancelled, "
                              "or with its current record after this many seconds"}
_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_UNAVAILABLE = {"503": _error("Redis is unavailable (Retry-After: 1)")}
_UNAUTHORIZED = {"401": _error("Missing or wrong bearer token")}
_BAD_BODY = {"400": _error("Invalid JSON or task"), "413": _error("Body over the limit"),
             "415": _error("Content-Type is not application/json"),
             "429": _error("The queue is past --max-pending (Retry-After: 1)"),
             "507": {**_error("Redis is out of memory, or past --max-memory-ratio of its maxmemory: nothing "
                              "was enqueued (Retry-After: seconds)"),
                     "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}}}}
_NAME_PARAM = {"name": "name", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": schedules.NAME_PATTERN}}
_SCHEDULE_PARAMS = [_NAME_PARAM, {**_QUEUE_PARAM, "description": "The schedule's queue (empty or absent: the "
                                                                   "server's queue)"}]
_NO_SCHEDULE = {"400": _error("Bad name or queue"), "404": _error("No such schedule")}
_SCHEDULE_LINK = {"name": "$response.body#/schedule/name", "queue": "$response.body#/schedule/queue"}


def _schedule_paths(common: dict[str, Any]) -> dict[str, Any]:
    """The paths of periodic schedules (reliq/api_schedules.py)."""
    written = {**_json(_ref("ScheduleWritten"), "The schedule as it is now"),
               "links": {"GetSchedule": {"operationId": "getSchedule", "parameters": _SCHEDULE_LINK},
                         "TriggerSchedule": {"operationId": "triggerSchedule", "parameters": _SCHEDULE_LINK},
                         "DeleteSchedule": {"operationId": "deleteSchedule", "parameters": _SCHEDULE_LINK}}}
    return {
        "/schedules": {"get": {
            "operationId": "listSchedules", "summary": "Every periodic schedule of the queue, by name",
            "parameters": [_SCHEDULE_PARAMS[1]],
            "responses": {"200": _json(_ref("Schedules"), "The schedules"), "400": _error("Bad queue name"),
                          **common}}},
        "/schedules/{name}": {
            "get": {"operationId": "getSchedule", "summary": "One schedule: definition, next and last run, counts",
                    "parameters": _SCHEDULE_PARAMS,
                    "responses": {"200": _json(_ref("Schedule"), "The schedule"), **_NO_SCHEDULE, **common}},
            "put": {"operationId": "putSchedule", "summary": "Define a schedule at run time (it wins over the code's)",
                    "parameters": _SCHEDULE_PARAMS,
                    "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ScheduleDefinition")}}},
                    "responses": {"201": written, "200": written,
                                  "400": _error("Bad name, cron expression, time zone or field: nothing written"),
                                  "413": _error("Body over the limit"),
                                  "415": _error("Content-Type is not application/json"), **common}},
            "delete": {"operationId": "deleteSchedule", "summary": "Remove a schedule (enqueued tasks stay)",
                       "parameters": _SCHEDULE_PARAMS,
                       "responses": {"200": _json(_ref("ScheduleDeleted"), "Removed"), **_NO_SCHEDULE, **common}},
        },
        "/schedules/{name}/trigger": {"post": {
            "operationId": "triggerSchedule", "summary": "Enqueue the schedule's task now, outside its slots",
            "parameters": _SCHEDULE_PARAMS,
            "responses": {"202": {**_json(_ref("ScheduleTriggered"), "Enqueued"), "links": _TASK_LINKS_OF_TRIGGER},
                          **_NO_SCHEDULE, **{k: v for k, v in _BAD_BODY.items() if k in ("429", "507")},
                          **common}}},
        "/schedules/{name}/pause": {"post": {
            "operationId": "pauseSchedule", "summary": "Decide no slot until resumed (those meanwhile never run)",
            "parameters": _SCHEDULE_PARAMS,
            "responses": {"200": _json(_ref("ScheduleWritten"), "Paused"), **_NO_SCHEDULE, **common}}},
        "/schedules/{name}/resume": {"post": {
            "operationId": "resumeSchedule", "summary": "Run its slots again from now on",
            "parameters": _SCHEDULE_PARAMS,
            "responses": {"200": _json(_ref("ScheduleWritten"), "Resumed"), **_NO_SCHEDULE, **common}}},
    }


#: What an accepted task leads to: its record (for stateful clients and fuzzers).
_TASK_PARAMS = {"id": "$response.body#/task_id", "queue": "$response.body#/queue"}
_TASK_LINKS = {
    "GetTask": {"operationId": "getTask", "parameters": _TASK_PARAMS},
    "CancelTask": {"operationId": "cancelTask", "parameters": _TASK_PARAMS},
    "DeleteTask": {"operationId": "deleteTask", "parameters": _TASK_PARAMS},
}


_TASK_LINKS_OF_TRIGGER = {"GetTask": _TASK_LINKS["GetTask"]}


def _accepted(description: str) -> dict[str, Any]:
    return {**_json(_ref("Accepted"), description), "links": _TASK_LINKS}


@cache
def spec(auth: bool = True) -> dict[str, Any]:
    """The OpenAPI document of a server with (``auth``) or without an API token."""
    common = {**(_UNAUTHORIZED if auth else {}), **_UNAVAILABLE}
    security: dict[str, Any] = {
        "components": {"schemas": _SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    } if auth else {"components": {"schemas": _SCHEMAS}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "reliq producer API", "version": __version__,
                 "description": "Enqueue, inspect and cancel tasks. A 202 means Redis has the task."
                                + ("" if auth else " This server has no API token: nothing needs one.")},
        **security,
        "paths": {
            "/task": {"post": {
                "operationId": "enqueueTask",
                "summary": "Enqueue a task",
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "minLength": 1, "maxLength": 200}}],
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("NewTask")}}},
                "responses": {"202": _accepted("Enqueued"),
                              "200": _accepted("Already enqueued under this Idempotency-Key, or a task of "
                                               "this type and unique key is alive: its id"),
                              **_BAD_BODY, **common},
            }},
            "/tasks": {"post": {
                "operationId": "enqueueTasks",
                "summary": "Enqueue up to 1,000 tasks of one queue, all or nothing",
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("NewTasks")}}},
                "responses": {"202": _json(_ref("AcceptedBatch"), "Enqueued"), **_BAD_BODY, **common},
            }},
            "/task/{id}": {
                "get": {"operationId": "getTask",
                        "summary": "A task's record; with wait, once it has ended (long poll)",
                        "parameters": [_ID_PARAM, _QUEUE_PARAM, _WAIT_PARAM],
                        "responses": {"200": _json(_ref("Task"), "The task (with wait: ended, or the wait ran out)"),
                                      "400": _error("Bad queue name, or wait not a number from 0 to 60"),
                                      "404": _error("No such task"),
                                      "429": _error("The server already serves max_waiters long polls "
                                                    "(Retry-After: 1)"), **common}},
                "delete": {"operationId": "deleteTask",
                           "summary": "Cancel a task and delete its record",
                           "description": "Counted as cancelled; whoever waits for it is woken, and then GET "
                                          "answers 404. A running task goes once its worker stopped it (202). "
                                          "To keep the record, POST /task/{id}/cancel.",
                           "parameters": [_ID_PARAM, _QUEUE_PARAM],
                           "responses": {"200": _json(_ref("Deleted"), "Cancelled and deleted"), **_CANCELLING,
                                         **_CANCEL_REFUSED, **common}},
            },
            "/task/{id}/cancel": {
                "post": {"operationId": "cancelTask", "summary": "Cancel a task, waiting or running",
                         "description": "The record stays, state cancelled, for the result TTL: GET shows it. "
                                        "A running task ends cancelled once its worker stopped it (202).",
                         "parameters": [_ID_PARAM, _QUEUE_PARAM],
                         "responses": {"200": _json(_ref("Cancelled"), "Cancelled"), **_CANCELLING,
                                       **_CANCEL_REFUSED, **common}},
            },
            **_schedule_paths(common),
            "/healthz": {"get": {"operationId": "healthz", "summary": "The process is alive", "security": [],
                                 "responses": {"200": _json(_ref("Status"), "Alive")}}},
            "/readyz": {"get": {"operationId": "readyz", "summary": "Redis answers", "security": [],
                                "responses": {"200": _json(_ref("Status"), "Ready"),
                                              "503": _error("Redis is unavailable")}}},
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1",
                                                            "content": {JSON: {"schema": {"type": "object"}}}},
                                                    **common}}},
        },
    }
