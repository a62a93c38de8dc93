"""The producer API described in OpenAPI 3.1 (served at GET /openapi.json).

A test checks that every route of the API app is described here and that responses
match their schemas, so this stays true as the API changes.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from reliq import __version__
from reliq.queue import MAX_DELAY_S, MAX_RETRIES_LIMIT, MAX_TIMEOUT_S, MAX_TYPE_LEN, STATES
from reliq.waiting import MAX_WAIT_S

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_TASK_FIELDS: dict[str, Any] = {
    "type": {"type": "string", "minLength": 1, "maxLength": MAX_TYPE_LEN, "description": "Handler name"},
    "payload": {"description": "Any JSON value, passed to the handler"},
    "max_retries": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES_LIMIT},
    "timeout_s": {"type": "number", "minimum": 0.001, "maximum": MAX_TIMEOUT_S},
    "delay_s": {"type": "number", "minimum": 0, "maximum": MAX_DELAY_S},
    "run_at": {"type": "string", "format": "date-time", "description": "RFC 3339, with a time zone"},
    "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 200},
    "queue": {"type": "string", "pattern": "^[^{}:\\s]{1,100}$", "description": "Default: the server's queue"},
}

_SCHEMAS: dict[str, Any] = {
    "NewTask": {
        "type": "object",
        "required": ["type"],
        "properties": {**_TASK_FIELDS, "durability": {"enum": ["memory", "replicated"]}},
    },
    "NewTasks": {
        "oneOf": [
            {"type": "array", "items": {"type": "object", "required": ["type"], "properties": _TASK_FIELDS},
             "minItems": 1, "maxItems": 1000},
            {"type": "object", "required": ["tasks"], "properties": {
                "tasks": {"type": "array", "items": {"type": "object", "required": ["type"],
                                                     "properties": _TASK_FIELDS},
                          "minItems": 1, "maxItems": 1000},
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
            "task_id": {"type": "string"},
            "queue": {"type": "string"},
            "state": {"enum": ["pending", "scheduled"]},
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
            "max_retries": {"type": "integer"},
            "payload": {},
            "result": {},
            "last_error": {"type": ["string", "null"]},
            "reason": {"type": ["string", "null"],
                       "description": "Why it died: error, timeout, crashed, unknown_type, permanent"},
            "worker": {"type": ["string", "null"]},
            "enqueued_at": {"type": ["string", "null"], "format": "date-time"},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "Cancelled": {
        "type": "object",
        "required": ["status", "task_id", "previous_state"],
        "properties": {"status": {"const": "cancelled"}, "task_id": {"type": "string"},
                       "previous_state": {"enum": ["pending", "scheduled", "retrying"]}},
    },
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
}

_QUEUE_PARAM = {"name": "queue", "in": "query", "required": False, "schema": {"type": "string"},
                "description": "The task's queue (default: the server's queue)"}
_WAIT_PARAM = {"name": "wait", "in": "query", "required": False,
               "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S, "default": 0},
               "description": "Long poll: answer as soon as the task is succeeded, dead or cancelled, "
                              "or with its current record after this many seconds"}
_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_COMMON = {"401": _error("Missing or wrong bearer token (when RELIQ_API_TOKEN is set)"),
           "503": _error("Redis is unavailable (Retry-After: 1)")}
_BAD_BODY = {"400": _error("Invalid JSON or task"), "413": _error("Body over the limit"),
             "415": _error("Content-Type is not application/json"),
             "429": _error("The queue is past --max-pending (Retry-After: 1)"),
             "507": {**_error("Redis is out of memory, or past --max-memory-ratio of its maxmemory: nothing "
                              "was enqueued (Retry-After: seconds)"),
                     "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}}}}


@cache
def spec() -> dict[str, Any]:
    """The OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "reliq producer API", "version": __version__,
                 "description": "Enqueue, inspect and cancel tasks. A 202 means Redis has the task."},
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/task": {"post": {
                "summary": "Enqueue a task",
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "minLength": 1, "maxLength": 200}}],
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("NewTask")}}},
                "responses": {"202": _json(_ref("Accepted"), "Enqueued"),
                              "200": _json(_ref("Accepted"), "Already enqueued under this Idempotency-Key"),
                              **_BAD_BODY, **_COMMON},
            }},
            "/tasks": {"post": {
                "summary": "Enqueue up to 1,000 tasks of one queue, all or nothing",
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("NewTasks")}}},
                "responses": {"202": _json(_ref("AcceptedBatch"), "Enqueued"), **_BAD_BODY, **_COMMON},
            }},
            "/task/{id}": {
                "get": {"summary": "A task's record; with wait, once it has ended (long poll)",
                        "parameters": [_ID_PARAM, _QUEUE_PARAM, _WAIT_PARAM],
                        "responses": {"200": _json(_ref("Task"), "The task (with wait: ended, or the wait ran out)"),
                                      "400": _error("Bad queue name, or wait not a number from 0 to 60"),
                                      "404": _error("No such task"),
                                      "429": _error("The server already serves max_waiters long polls "
                                                    "(Retry-After: 1)"), **_COMMON}},
                "delete": {"summary": "Cancel a task that has not started", "parameters": [_ID_PARAM, _QUEUE_PARAM],
                           "responses": {"200": _json(_ref("Cancelled"), "Cancelled"),
                                         "400": _error("Bad queue name"), "404": _error("No such task"),
                                         "409": _json({"allOf": [_ref("Error"), {"required": ["state"]}]},
                                                      "Running or finished"), **_COMMON}},
            },
            "/healthz": {"get": {"summary": "The process is alive", "security": [],
                                 "responses": {"200": _json(_ref("Status"), "Alive")}}},
            "/readyz": {"get": {"summary": "Redis answers", "security": [],
                                "responses": {"200": _json(_ref("Status"), "Ready"),
                                              "503": _error("Redis is unavailable")}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1",
                                                            "content": {JSON: {"schema": {"type": "object"}}}},
                                                    **_COMMON}}},
        },
    }
