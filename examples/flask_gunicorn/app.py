"""A Flask app that enqueues one task per request, made to run under a pre-forking server.

    gunicorn --preload --workers 2 --bind 127.0.0.1:8000 app:app

With ``--preload`` gunicorn imports this module once, in the master, then forks the
workers. The producer (the handler's ``.enqueue``, through reliq's default Client) is
set up and used here, before the fork — that is what a pre-forking server does to a
client, and reliq's Client is made for it: each worker opens its own connections on
its first call and never touches the master's.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request
from tasks import send_welcome

import reliq
import reliq.producer

reliq.configure(redis_url=os.environ.get("REDIS_URL", "redis://localhost:6379/0"),
                queue=os.environ.get("RELIQ_QUEUE", "default"))
# Fail at boot, not at the first request, when Redis is unreachable (in the master,
# before the fork: the workers inherit this connection and leave it alone).
reliq.producer.default_client().ping()

app = Flask(__name__)


@app.post("/signup")
def signup() -> tuple[dict[str, Any], int]:
    """Enqueue the welcome mail and answer at once: 202 with the task id."""
    body = request.get_json(silent=True) or {}
    email = body.get("email")
    if not isinstance(email, str) or "@" not in email:
        return {"error": "'email' must be an email address"}, 400
    task_id = send_welcome.enqueue({"email": email}, idempotency_key=f"welcome:{email}")
    return {"task_id": task_id, "worker_pid": os.getpid()}, 202


@app.get("/task/<task_id>")
def task(task_id: str) -> tuple[dict[str, Any], int]:
    """The task's record (state, result, error), or 404."""
    try:
        return dict(reliq.producer.default_client().get(task_id)), 200
    except reliq.TaskNotFound:
        return {"error": f"no task {task_id}"}, 404
