"""A 2-second periodic task for the schedule tests: each run appends "<task id> <attempt>" to a file.

``reliq work --app tests.apps.periodic`` with ``RELIQ_TEST_RUN_LOG`` naming the file.
"""

from __future__ import annotations

import os
from typing import Any

import reliq

LOG = os.environ.get("RELIQ_TEST_RUN_LOG", os.devnull)


@reliq.periodic(every=2, name="tick-2s", payload={"log": LOG})
@reliq.task("tick")
def tick(payload: dict[str, Any], ctx: reliq.Context) -> None:
    """Record the run (one short append: lines of several processes do not mix)."""
    with open(payload["log"], "a") as out:
        out.write(f"{ctx.task_id} {ctx.attempt}\n")
