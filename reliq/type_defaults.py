"""What a task type asks of every enqueue: its default ``max_retries``, and whether its tasks are unique.

``@reliq.task("x", max_retries=10, unique=True)`` declares them. They must reach
producers that never import the handler (the HTTP API, ``Client.enqueue("x")``, ``reliq
enqueue``), so each worker writes the defaults of the types it serves into its queues'
``types`` hash when it starts (:func:`register`), and ``enqueue.lua`` applies them to a
task that does not say otherwise. A producer that imports the handler
(``TaskFunction.enqueue``) passes them itself, so they hold there before any worker ran.
A worker that serves a type without defaults takes the type's entry out, so dropping
one from the code takes effect at the next worker start. The hash exists
only while some type has defaults: a queue without any pays one EXISTS an enqueue call.

The entry's format, JSON ``{"max_retries": int, "unique": true}`` with only the fields set, is written
here and read only by ``enqueue.lua``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from reliq.queue import MAX_RETRIES_LIMIT

if TYPE_CHECKING:
    from reliq.queue import Queue
    from reliq.registry import Registry


@dataclass(frozen=True, slots=True)
class TypeDefaults:
    """The enqueue-side defaults of one task type (None/False: the queue's)."""

    max_retries: int | None = None
    #: Every task of the type is unique while alive, keyed by its payload (an enqueue may say otherwise).
    unique: bool = False

    def __post_init__(self) -> None:
        r = self.max_retries
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= MAX_RETRIES_LIMIT):
            raise ValueError(f"max_retries must be an integer from 0 to {MAX_RETRIES_LIMIT}, not {r!r}")
        if not isinstance(self.unique, bool):
            raise TypeError(f"unique must be True or False on a task type, not {self.unique!r} (a key of its "
                            "own is given at enqueue: unique_key=...)")

    def __bool__(self) -> bool:
        return self.max_retries is not None or self.unique

    def entry(self) -> bytes:
        """The value of this type's field in the ``types`` hash (see the module docstring)."""
        return orjson.dumps(self.options())

    def options(self) -> dict[str, Any]:
        """These defaults as enqueue options (for producers that import the handler)."""
        out: dict[str, Any] = {}
        if self.max_retries is not None:
            out["max_retries"] = self.max_retries
        if self.unique:
            out["unique"] = True
        return out


#: The defaults of a type that declares none.
NONE = TypeDefaults()


def entries(defaults: Mapping[str, TypeDefaults]) -> tuple[dict[str, bytes], list[str]]:
    """The ``types`` hash fields to set (type -> entry) and the types to take out."""
    return ({name: d.entry() for name, d in defaults.items() if d},
            sorted(name for name, d in defaults.items() if not d))


async def register(queues: list[Queue], registry: Registry) -> None:
    """Write the defaults of every type in ``registry`` into each queue's ``types`` hash."""
    fields, cleared = entries(registry.defaults())
    for queue in queues:
        await queue.set_type_defaults(fields, cleared)
