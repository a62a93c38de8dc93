"""reliq: a fault-tolerant task queue on Redis for asyncio Python."""

from reliq.client import AsyncClient, Client
from reliq.errors import CancelRefused, InvalidTask, PermanentError, QueueFull, RedisFull, ReliqError, TaskNotFound
from reliq.producer import TaskFunction, configure
from reliq.registry import Context, task
from reliq.settings import Settings

__all__ = [
    "AsyncClient",
    "CancelRefused",
    "Client",
    "Context",
    "InvalidTask",
    "PermanentError",
    "QueueFull",
    "RedisFull",
    "ReliqError",
    "Settings",
    "TaskFunction",
    "TaskNotFound",
    "configure",
    "task",
]
__version__ = "0.1.0"
