"""Stopping the running tasks whose cancel was asked for (docs/cancel.md).

``cancel.lua`` marks a running task's record, adds its id to its worker's cancel-request
set and publishes the id on the worker's channel. The worker learns of it twice over:

- at once, from the worker's pub/sub connection (reliq/worker/nudges.py: one a worker
  process for all its queues and their wake-ups, not one a task: connections stay bounded);
- within one heartbeat, from the beat's reply, which carries the whole set: a message
  missed while that connection was down is not a cancel missed.

Both call :meth:`Cancels.ask`, which does nothing the second time. How the attempt is
stopped depends on where its handler runs:

- async: its runner is cancelled, so ``asyncio.CancelledError`` is raised inside the
  handler (``ctx.cancelled`` turns true too);
- a thread: ``ctx.cancelled`` turns true; a thread cannot be stopped, so the task keeps
  its slot until the handler returns;
- a child process (``isolation="process"``): ``ctx.cancelled`` turns true in the child
  (SIGUSR1), and the child is killed once ``grace`` seconds have passed.

Once the handler could see the request (async; a thread or a child taking ``ctx``; a
killed child), the attempt ends ``cancelled``, whatever the handler does next. A handler
that could not see it keeps its outcome, except that a failure is not retried (settle.lua).
A task claimed ahead and not started yet is not started.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Container, Mapping
from typing import Any

from reliq.queue import Claimed
from reliq.registry import Handler, Registry
from reliq.worker.procpool import Child

log = logging.getLogger(__name__)


class Cancels:
    """The cancel requests of one worker's tasks, and the means to stop each running attempt."""

    def __init__(self, registry: Registry, held: Container[str], running: Mapping[asyncio.Task[Any], Claimed],
                 grace: float) -> None:
        self.registry = registry
        self.held = held  # the worker's claimed, unsettled tasks
        self.running = running  # runner -> the task it runs (the worker's)
        self.grace = grace
        #: Ids of held tasks whose cancel was asked for, until settled.
        self.asked: set[str] = set()
        self._events: dict[str, threading.Event] = {}  # task id -> its ctx's cancel flag
        self._children: dict[str, Child] = {}  # task id -> the child process running it
        self._timers: dict[str, asyncio.TimerHandle] = {}  # task id -> its child's kill after the grace
        self._ours: dict[asyncio.Task[Any], int] = {}  # runner -> cancels we sent it, not yet taken back

    # -- what the worker tells us -------------------------------------------------------

    def ask(self, task_id: str) -> None:
        """A cancel of ``task_id`` was asked for: stop it if it runs here (idempotent)."""
        if task_id in self.asked or task_id not in self.held:
            return  # not ours (yet: a claim still on its way; the next beat says it again)
        self.asked.add(task_id)
        log.info("task %s: cancel asked for; stopping it", task_id)
        runner = next((r for r, t in self.running.items() if t.id == task_id), None)
        if runner is not None:
            self._stop(runner, self.running[runner])

    def context_flag(self, task_id: str) -> threading.Event:
        """The flag behind a new attempt's ``ctx.cancelled`` (set at once if asked already)."""
        flag = threading.Event()
        if task_id in self.asked:
            flag.set()
        self._events[task_id] = flag
        return flag

    def child_taken(self, task_id: str, child: Child) -> None:
        """A child process took the task: tell it at once if its cancel was asked for already."""
        self._children[task_id] = child
        if task_id in self.asked:
            self._signal_child(task_id, child)

    def take_back(self, runner: asyncio.Task[Any]) -> bool:
        """Withdraw the cancels we sent ``runner``; True if the CancelledError it got was ours alone.

        False when nobody here cancelled it, or someone else did too (the shutdown): that
        cancellation stands.
        """
        sent = self._ours.pop(runner, 0)
        for _ in range(sent):
            runner.uncancel()
        return sent > 0 and runner.cancelling() == 0

    def ended(self, task_id: str, runner: asyncio.Task[Any]) -> None:
        """The attempt is over: forget its means of being stopped."""
        if self._events:
            self._events.pop(task_id, None)
        if self._children:
            self._children.pop(task_id, None)
        if self._timers:
            timer = self._timers.pop(task_id, None)
            if timer is not None:
                timer.cancel()
        if self._ours:
            self.take_back(runner)  # a handler that swallowed the CancelledError leaves none pending

    def passed(self, task: Claimed, handler: Handler | None, killed: bool = False) -> bool:
        """Whether the handler of ``task`` could see its cancel: its attempt then ends cancelled."""
        if task.id not in self.asked:
            return False
        return killed or handler is None or handler.wants_context or (handler.is_async and handler.isolation is None)

    def settled(self, task_id: str) -> None:
        """The task's end is in Redis: its request is done with."""
        self.asked.discard(task_id)

    # -- stopping -------------------------------------------------------------------------

    def _stop(self, runner: asyncio.Task[Any], task: Claimed) -> None:
        flag = self._events.get(task.id)
        if flag is not None:
            flag.set()
        handler = self.registry.get(task.type)
        if handler is None:
            return
        if handler.isolation == "process":
            child = self._children.get(task.id)
            if child is not None:
                self._signal_child(task.id, child)
        elif handler.is_async:
            self._interrupt(runner, task.id)

    def _signal_child(self, task_id: str, child: Child) -> None:
        child.cancel()
        loop = asyncio.get_running_loop()
        runner = next((r for r, t in self.running.items() if t.id == task_id), None)
        if runner is not None and task_id not in self._timers:
            self._timers[task_id] = loop.call_later(self.grace, self._kill, runner, task_id)

    def _kill(self, runner: asyncio.Task[Any], task_id: str) -> None:
        self._timers.pop(task_id, None)
        log.warning("task %s: still running %gs after its cancel; killing its child process", task_id, self.grace)
        self._interrupt(runner, task_id)

    def _interrupt(self, runner: asyncio.Task[Any], task_id: str) -> None:
        task = self.running.get(runner)
        if task is None or task.id != task_id:
            return  # it ended meanwhile
        self._ours[runner] = self._ours.get(runner, 0) + 1
        runner.cancel()
