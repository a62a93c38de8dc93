"""GET /openapi.json stays true: every route is described, and answers match the schemas.

A hypothesis fuzz throws arbitrary JSON at POST /task and POST /tasks: no 5xx, every
status is a documented one, every body matches its schema, every accepted task can be
read back, and a rejected request writes nothing. It tries 120 bodies an endpoint;
``RELIQ_FUZZ_EXAMPLES`` asks for more (as for ``tests/test_contract.py``). The module has a
redis-server of its own: each body reads the keyspace by SCAN, which costs what the whole
database holds, and a session's database holds every other test's leftovers (the two
fuzzes took 37 s on the session's, 2 s on their own).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from redis.asyncio import Redis

from reliq import api
from reliq.openapi import spec
from reliq.queue import Queue
from reliq.redis_server import RedisServer
from reliq.settings import Settings
from tests.keyspace import keyspace
from tests.util import api_client

SPEC = spec()


def schema(ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    """A standalone JSON Schema (2020-12) resolving the document's components."""
    return {**ref_or_schema, "components": SPEC["components"]}


def check_response(path: str, method: str, status: int, body: Any) -> None:
    responses = SPEC["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered undocumented {status}: {body}"
    described = responses[str(status)]["content"]["application/json"]["schema"]
    jsonschema.validate(body, schema(described), cls=jsonschema.Draft202012Validator)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the module alone (the session's ``redis_url`` overridden): see above."""
    server = RedisServer(tmp_path_factory.mktemp("openapi-redis"), aof=False).start()
    yield server.url
    server.stop()


@pytest.fixture
async def http(queue: Queue, settings: Settings) -> AsyncIterator[TestClient]:
    async with api_client(queue, settings.replace(max_body=64 * 1024)) as client:
        yield client


def test_the_document_is_valid_openapi_3_1_json_schema() -> None:
    assert SPEC["openapi"] == "3.1.0"
    for name, component in SPEC["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(component), name


async def test_every_route_is_described_and_every_description_is_a_route(
    queue: Queue, settings: Settings
) -> None:
    app = api.create_app(queue, settings)
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()  # type: ignore[union-attr]
              if r.method != "HEAD"}
    described = {(method, path) for path, ops in SPEC["paths"].items() for method in ops}
    assert routes == described


async def test_served_document_is_the_spec_of_the_servers_configuration(
    http: TestClient, queue: Queue, settings: Settings
) -> None:
    resp = await http.get("/openapi.json")
    served = await resp.json()
    assert resp.status == 200 and served == spec(auth=False)
    # Without a token nothing needs one, and the document says so.
    assert "security" not in served and "securitySchemes" not in served["components"]
    assert not any("401" in op["responses"] for path in served["paths"].values() for op in path.values())
    async with api_client(queue, settings.replace(api_token="tok")) as guarded:
        resp = await guarded.get("/openapi.json", headers={"Authorization": "Bearer tok"})
        assert await resp.json() == SPEC and SPEC["security"] == [{"bearer": []}]


async def test_documented_answers_of_a_task_lifecycle(http: TestClient) -> None:
    resp = await http.post("/task", json={"type": "noop", "payload": [1, "x"]})
    body = await resp.json()
    check_response("/task", "post", resp.status, body)
    resp = await http.get(f"/task/{body['task_id']}")
    check_response("/task/{id}", "get", resp.status, await resp.json())
    resp = await http.delete(f"/task/{body['task_id']}")
    check_response("/task/{id}", "delete", resp.status, await resp.json())
    resp = await http.delete(f"/task/{body['task_id']}")
    check_response("/task/{id}", "delete", resp.status, await resp.json())
    resp = await http.get("/task/nope")
    check_response("/task/{id}", "get", resp.status, await resp.json())
    resp = await http.post("/tasks", json=[{"type": "noop"}] * 2)
    check_response("/tasks", "post", resp.status, await resp.json())
    for path in ("/healthz", "/readyz"):
        resp = await http.get(path)
        check_response(path, "get", resp.status, await resp.json())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
field_values = {
    "type": st.sampled_from(["noop", "", "  ", "x" * 201]) | json_values,
    "payload": json_values,
    "max_retries": st.integers(-5, 200) | json_values,
    "timeout_s": st.floats(-1, 10**6, allow_nan=False) | json_values,
    "delay_s": st.floats(-1, 10**9, allow_nan=False) | json_values,
    "run_at": st.sampled_from(["2030-01-01T00:00:00Z", "2030-01-01", "soon"]) | json_values,
    "idempotency_key": st.text(max_size=250) | json_values,
    "queue": st.sampled_from(["fuzz", "a:b", ""]) | json_values,
    "durability": st.sampled_from(["memory", "fast"]) | json_values,
}
tasks = st.fixed_dictionaries({}, optional=field_values) | json_values
FUZZ = hsettings(max_examples=int(os.environ.get("RELIQ_FUZZ_EXAMPLES", "120")), deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=tasks)
async def test_fuzzed_post_task_never_5xx_and_writes_only_what_it_accepts(
    http: TestClient, queue: Queue, redis: Redis, body: Any
) -> None:
    await fuzz_one(http, queue, redis, "/task", body)


@FUZZ
@given(body=st.lists(tasks, max_size=5) | st.fixed_dictionaries({"tasks": st.lists(tasks, max_size=5)},
                                                                 optional={"queue": field_values["queue"]}))
async def test_fuzzed_post_tasks_never_5xx_and_is_all_or_nothing(
    http: TestClient, queue: Queue, redis: Redis, body: Any
) -> None:
    await fuzz_one(http, queue, redis, "/tasks", body)


async def fuzz_one(http: TestClient, queue: Queue, redis: Redis, path: str, body: Any) -> None:
    names = [queue.name, "fuzz"]
    before = [await keyspace(redis, name) for name in names]
    resp = await http.post(path, json=body)
    answer = await resp.json()
    check_response(path, "post", resp.status, answer)
    if resp.status in (200, 202):
        accepted = answer.get("tasks", [answer])
        for task in accepted:
            got = await http.get(f"/task/{task['task_id']}", params={"queue": task["queue"]})
            assert got.status == 200
            check_response("/task/{id}", "get", got.status, await got.json())
    else:
        assert [await keyspace(redis, name) for name in names] == before
