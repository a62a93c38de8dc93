"""The producer API holds its own contract against an independent fuzzer, schemathesis.

``schemathesis run .../openapi.json --checks all``, every phase (examples, coverage,
fuzzing, stateful), against a real ``reliq serve`` on a private redis-server with a
replica (so that ``"durability": "replicated"`` can be honoured rather than answered
503), once with an API token and once without: 0 failures. The examples per operation
are bounded so both runs stay within about a minute; ``RELIQ_FUZZ_EXAMPLES`` and
``RELIQ_FUZZ_SEED`` widen or vary a run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reliq.redis_server import RedisServer, answers, free_port
from tests.procs import ROOT, stop
from tests.util import wait_until

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
EXAMPLES = os.environ.get("RELIQ_FUZZ_EXAMPLES", "15")
SEED = os.environ.get("RELIQ_FUZZ_SEED", "1")

pytestmark = pytest.mark.skipif(SCHEMATHESIS is None, reason="needs schemathesis (the dev extra)")


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A primary redis-server with one replica attached; yields the primary's URL."""
    primary = RedisServer(tmp_path_factory.mktemp("primary"), aof=False).start()
    replica = RedisServer(tmp_path_factory.mktemp("replica"), aof=False,
                          extra=("--replicaof", "127.0.0.1", str(primary.port))).start()
    try:
        import redis

        client = redis.Redis(port=primary.port)
        # online, not only connected: a replica still in its first sync (Redis 7 waits
        # repl-diskless-sync-delay, 5 s, before it) confirms no WAIT, and the API's
        # 'replicated' answers 503 meanwhile, which schemathesis takes for a server error
        wait_until(lambda: client.info("replication").get("slave0", {}).get("state") == "online",
                   what="replica online", timeout=30)
        client.close()
        yield primary.url
    finally:
        replica.stop()
        primary.stop()


class Fuzz:
    """A fresh ``reliq serve`` (with ``token``, or none) and a schemathesis run against it."""

    def __init__(self, redis_url: str, token: str, workdir: Path) -> None:
        self.token, self.workdir = token, workdir
        workdir.mkdir()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELIQ_")}
        if token:
            env["RELIQ_API_TOKEN"] = token
        self.log = workdir / "api.log"
        with self.log.open("wb") as out:
            self.api = subprocess.Popen([sys.executable, "-m", "reliq", "serve", "--redis-url", redis_url,
                                         # a queue a run: the two runs share the Redis, and one
                                         # run's DELETE of a task the other's unique or idempotency
                                         # key had been answered with made that other run's next
                                         # request on it a 404 (schemathesis ST302)
                                         "--queue", "fuzz-token" if token else "fuzz",
                                         "--port", str(port)],
                                        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: answers("127.0.0.1", port) or self.api.poll() is not None, timeout=60,
                   what="API listening")
        assert self.api.poll() is None, self.log.read_text()
        auth = ["-H", f"Authorization: Bearer {token}"] if token else []
        # GET /task/{id}?wait= is a long poll of up to 60 s: fuzzed, a request on a real task
        # would hold the run that long. The fuzz asks with wait=0; tests/test_wait.py covers
        # the long poll and its bounds.
        # A cron expression's validity and a time zone's existence are no JSON Schema: a
        # definition the schema admits may still be a 400 (tests/test_schedules.py covers those).
        (workdir / "schemathesis.toml").write_text(
            '[parameters]\n"query.wait" = "0"\n\n'
            '[[operations]]\ninclude-path-regex = "^/schedules"\ngeneration.max-examples = 8\n'
            '[operations.checks.positive_data_acceptance]\n'
            'expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]\n')
        assert SCHEMATHESIS
        self.run = subprocess.Popen(
            [SCHEMATHESIS, "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "all",
             "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", EXAMPLES, "--seed", SEED,
             "--generation-database", "none", "--no-color", *auth],
            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self) -> tuple[int, str, str]:
        """Wait for the run: (exit code, schemathesis's output, the API's log)."""
        try:
            output, _ = self.run.communicate(timeout=240)
            return self.run.returncode, output, self.log.read_text()
        finally:
            self.close()

    def close(self) -> None:
        """Make sure both processes are gone (after a failure too)."""
        for proc in (getattr(self, "run", None), self.api):
            if proc is not None:
                stop(proc)
                if proc.stdout:
                    proc.stdout.close()

    def check(self) -> None:
        """0 failures in every phase, and no traceback in the API's log."""
        code, output, log = self.result()
        summary = output[output.find("SUMMARY"):]
        name = "with a token" if self.token else "without a token"
        assert code == 0, f"schemathesis {name}:\n{output[-12000:]}"
        assert "Tested: 14" in summary, summary
        for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
            assert not re.search(rf"❌\s+{phase}", summary), summary
        assert "Traceback" not in log, log[-8000:]  # bad input is a 4xx and one log line, never a trace


@pytest.mark.timeout(400)  # ~65 s on a loaded 2-core machine; RELIQ_FUZZ_EXAMPLES makes it longer
def test_schemathesis_finds_no_failure_in_any_phase_with_a_token_or_without(replicated: str,
                                                                            tmp_path: Path) -> None:
    # Both configurations at once: each run is mostly waiting on the other process.
    runs: list[Fuzz] = []
    try:
        # A database each (replicated alike): both runs have the same seed, so they send the
        # same requests, queue names in bodies included, and one's DELETE of a task the other
        # had just created made the other's next request on it a 404 (schemathesis ST302).
        runs.append(Fuzz(replicated, "", tmp_path / "no-token"))
        runs.append(Fuzz(replicated.removesuffix("/0") + "/1", "fuzz-t0ken", tmp_path / "token"))
        for run in runs:
            run.check()
    finally:
        for run in runs:
            run.close()
