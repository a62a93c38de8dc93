"""The package's layout keeps its promises: what a command loads, what names what."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from reliq.keys import QueueKeys
from tests.procs import ROOT

#: Modules an admin command has no use for: the HTTP roles and the worker.
ROLES = ("reliq.api", "reliq.roles", "reliq.worker.worker", "reliq.worker.fetcher", "reliq.monitor.app")


@pytest.mark.parametrize("args", [["stats"], ["dlq", "list"]])
def test_the_admin_commands_load_neither_the_api_nor_the_worker(redis_url: str, queue_name: str,
                                                                args: list[str]) -> None:
    """``reliq stats`` and ``reliq dlq`` read Redis: loading the roles would only slow them."""
    code = ("import json, sys\n"
            "from reliq.cli import main\n"
            "try:\n"
            f"    main({[*args, '--redis-url', redis_url, '--queue', queue_name]!r})\n"
            "except SystemExit as exc:\n"
            "    code = exc.code\n"
            f"print(json.dumps({{'code': code, 'loaded': sorted(m for m in sys.modules if m in {ROLES!r})}}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {"code": 0, "loaded": []}, done.stderr


#: The modules that may name Redis keys: the names themselves, the way to Redis (async, in its
#: four parts, and blocking), the script calls both build, and the script loader.
KEYED = {"reliq/keys.py", "reliq/queue.py", "reliq/queue_base.py", "reliq/queue_reads.py", "reliq/queue_admin.py",
         "reliq/syncqueue.py", "reliq/calls.py", "reliq/scripts.py"}
#: Redis commands that read or write data: called on a client anywhere else, they bypass Queue.
DATA_COMMANDS = {
    "get", "set", "delete", "exists", "expire", "keys", "scan", "scan_iter", "type", "hget", "hgetall", "hmget",
    "hset", "hdel", "hincrby", "lrange", "llen", "lpush", "rpush", "lpop", "rpop", "lrem", "blpop", "brpop",
    "blmove", "lmove", "zrange", "zcard", "zadd", "zrem", "zscore", "zrangebyscore", "xrange", "xrevrange",
    "xadd", "xlen", "eval", "evalsha", "pipeline", "execute_command", "script_load", "fcall",
}


def _keyed_uses(path: Path) -> list[str]:
    """What in ``path`` names a Redis key or sends a data command past Queue, as ``line: what``."""
    found: list[tuple[int, str]] = []
    tree = ast.parse(path.read_text(), str(path))
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}  # dict.keys() is fine
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module == "reliq.keys" or (
                node.module == "reliq" and any(a.name == "keys" for a in node.names))):
            found.append((node.lineno, "imports reliq.keys"))
        elif isinstance(node, ast.Attribute) and node.attr == "keys" and id(node) not in called:
            found.append((node.lineno, f"{ast.unparse(node)}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("reliq:{"):
            found.append((node.lineno, f"the key {node.value!r}"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in DATA_COMMANDS
              and (node.func.attr == "pipeline" or ast.unparse(node.func.value).split(".")[-1] in (
                  "redis", "_redis", "_blocking", "blocking"))):
            found.append((node.lineno, f"{ast.unparse(node.func)}()"))
    return [f"{line}: {what}" for line, what in sorted(found)]


def test_queue_is_the_only_way_to_redis_keys() -> None:
    """Key names live in keys.py and are used by Queue (and its blocking twin) alone: a
    module that reads a list itself would miss the next change of the layout."""
    offenders = {}
    for path in sorted((ROOT / "reliq").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name not in KEYED and (uses := _keyed_uses(path)):
            offenders[name] = uses
    assert offenders == {}


def test_the_key_check_sees_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from reliq.keys import QueueKeys\n"
                   "async def f(queue):\n"
                   "    await queue.redis.lrange(queue.keys.pending, 0, -1)\n"
                   "    return 'reliq:{q}:pending', {}.keys()\n")
    assert _keyed_uses(bad) == ["1: imports reliq.keys", "3: queue.keys", "3: queue.redis.lrange()",
                                "4: the key 'reliq:{q}:pending'"]


ARCHITECTURE = ROOT / "docs" / "architecture.md"


def test_every_module_and_script_is_named_in_the_architecture() -> None:
    """docs/architecture.md lists each module (as its path under reliq/) and each Lua script."""
    text = ARCHITECTURE.read_text()
    modules = [p.relative_to(ROOT / "reliq").as_posix() for p in sorted((ROOT / "reliq").rglob("*.py"))]
    scripts = [p.name for p in sorted((ROOT / "reliq" / "lua").glob("*.lua"))]
    missing = [name for name in [*modules, *scripts] if f"`{name}`" not in text]
    assert missing == [], f"name these in {ARCHITECTURE.relative_to(ROOT)}: {missing}"


def test_every_redis_key_is_in_the_architectures_layout() -> None:
    """Each key keys.py names (a prefix stands for its keys) has its row in the Redis layout."""
    section = ARCHITECTURE.read_text().partition("## Redis layout")[2].partition("\n## ")[0]
    keys = QueueKeys("Q")
    names = []
    for attr in dir(QueueKeys):
        value = getattr(QueueKeys, attr)
        if attr.startswith("_") or attr in ("base", "queue"):
            continue
        if isinstance(value, property):
            names.append(getattr(keys, attr))
        elif callable(value) and not hasattr(QueueKeys, f"{attr}_prefix"):
            names.append(getattr(keys, attr)("<x>").partition("<x>")[0])  # e.g. worker_info: reliq:{Q}:worker:
    missing = [name for name in names if f"`{name}" not in section]
    assert missing == [], f"add these keys to the Redis layout of {ARCHITECTURE.relative_to(ROOT)}: {missing}"
