"""The ``reliq`` command: parses flags into Settings and calls one ``run_*`` function."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

import reliq.admin
import reliq.limits
import reliq.schedules
import reliq.shell
from reliq import __version__, logs, pausing
from reliq.errors import ConfigError, InvalidTask
from reliq.formats import DeadReason
from reliq.monitor.deadletter import DeadFilter
from reliq.settings import DURABILITIES, MAX_PARTITIONS, Settings, check_queue_name

F = Callable[..., Any]

#: What a flag left out stands for: the help shows these, never a number typed again.
DEFAULTS = Settings()


def _default(name: str, zero: str = "") -> str:
    """The default of setting ``name`` as the help shows it (``zero``: what 0 means there)."""
    value = getattr(DEFAULTS, name)
    if zero and not value:
        return f"0 = {zero}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _redis_url(fn: F) -> F:
    """``--redis-url``, the same for every command."""
    return click.option("--redis-url", help=f"Redis URL [env REDIS_URL; default {_default('redis_url')}]")(fn)


def _queue(fn: F) -> F:
    """``--queue`` for commands that act on one queue."""
    return click.option("--queue", help=f"Queue name [env RELIQ_QUEUE; default {_default('queue')!r}]")(fn)


def _partitions(fn: F) -> F:
    """``--partitions`` for the roles that name a queue (docs/partitions.md)."""
    return _setting("--partitions", "Partitions of the queue (docs/partitions.md): recorded in Redis when it "
                    "records none, refused (exit 2) when it records another number [env RELIQ_PARTITIONS]",
                    zero="what Redis records, 1 when nothing", type=click.IntRange(0, MAX_PARTITIONS))(fn)


def _one_queue(fn: F) -> F:
    """``--redis-url`` and ``--queue``: which queue of which Redis a command acts on."""
    return _redis_url(_queue(fn))


def _common(fn: F) -> F:
    """Options every role takes."""
    fn = _redis_url(fn)
    fn = click.option("--log-level", default="INFO", show_default=True,
                      type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))(fn)
    fn = click.option("--log-format", default="text", show_default=True, envvar="RELIQ_LOG_FORMAT",
                      type=click.Choice(logs.FORMATS, case_sensitive=False),
                      help="Log lines as text, or one JSON object a line [env RELIQ_LOG_FORMAT]")(fn)
    return fn


def _private_option(fn: F) -> F:
    """Who may read the monitor: ``--private``, ``--public-read``, ``--public-metrics``."""
    fn = click.option("--public-metrics", is_flag=True, default=None,
                      help="Monitor: serve /metrics without a token (a Prometheus that cannot send one) "
                           "[env RELIQ_PUBLIC_METRICS]")(fn)
    fn = click.option("--public-read", is_flag=True, default=None,
                      help="Monitor beyond loopback: let anyone read stats and dead letters without a token "
                           "[env RELIQ_PUBLIC_READ]")(fn)
    return click.option("--private", is_flag=True, default=None,
                        help="Monitor: require a token for reads even on loopback (RELIQ_API_TOKEN, or "
                             "RELIQ_READ_TOKEN for reads only) [env RELIQ_PRIVATE]")(fn)


def _setting(flag: str, help: str, dest: str = "", zero: str = "", **kwargs: Any) -> Callable[[F], F]:
    """An option setting the Settings field ``dest`` (by default the flag's name), whose help
    ends with that field's default (``zero``: what 0 means there)."""
    name = dest or flag.removeprefix("--").replace("-", "_")
    return click.option(flag, name, help=f"{help} [{_default(name, zero)}]", **kwargs)


def _worker_options(fn: F) -> F:
    """Options of the worker pool (``work`` and ``all``)."""
    positive = click.FloatRange(min=0, min_open=True)
    decorators: list[Callable[[F], F]] = [
        click.option("--queue", "queues", multiple=True,
                     help="Queue to serve: NAME or NAME=WEIGHT, repeatable (e.g. --queue critical=6 "
                          f"--queue default=3 --queue low=1) [env RELIQ_QUEUES; default {_default('queue')!r}]"),
        _partitions,
        click.option("--strict", is_flag=True, default=None,
                     help="Serve the queues in strict order of weight instead of weighted random"),
        _setting("--concurrency", "Tasks run at once", type=click.IntRange(1)),
        click.option("--app", "apps", multiple=True, help="Module registering handlers (repeatable)"),
        _setting("--drain-timeout", "Seconds to let tasks finish on SIGTERM", type=float),
        _setting("--task-timeout", "Default per-task timeout, seconds", type=float),
        _setting("--max-retries", "Retries before dead-lettering", type=click.IntRange(0)),
        _setting("--retry-base", "Backoff base, seconds", type=float),
        _setting("--lease", "Seconds of silence before a worker is taken for dead", type=float),
        _setting("--heartbeat-interval", "Seconds between heartbeats", type=float),
        _setting("--crash-limit", "Solo crashes before quarantine", type=click.IntRange(1)),
        _setting("--priority-aging", "Longest a priority-0 task waits behind priority-9 tasks enqueued after it, "
                 "seconds (0 = strict priorities)", type=click.FloatRange(min=0)),
        _setting("--keep-succeeded", "Succeeded records a queue keeps, the oldest deleted first, counted",
                 type=click.IntRange(0)),
        _setting("--result-ttl", "Seconds succeeded (and cancelled) records are kept, counted when deleted",
                 type=positive),
        _setting("--dead-cap", "Dead tasks kept before the oldest move to the archive", zero="no cap",
                 type=click.IntRange(0)),
        _setting("--dead-archive-cap", "Entries the dead-letter archive keeps; older ones are deleted, counted",
                 type=click.IntRange(1)),
        _setting("--loop-block-warn", "Warn when a handler holds the event loop this many seconds", type=positive),
        _setting("--process-pool", "Child processes for isolation='process' handlers", zero="one per core",
                 type=click.IntRange(0)),
        _setting("--cancel-grace", "Seconds a cancelled isolation='process' handler has to stop before its child "
                 "is killed", type=click.FloatRange(min=0)),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def _settings(log_level: str, log_format: str, **flags: Any) -> Settings:
    logs.configure(log_level, log_format.lower())
    return Settings.load(**flags)


def _exit(code: int) -> None:
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="reliq", message="%(prog)s %(version)s")
def main() -> None:
    """reliq: a task queue on Redis that loses nothing."""


@main.command()
@_common
@_worker_options
@click.option("--burst", is_flag=True, help="Exit once the queue is empty (for scripts and tests)")
@click.option("--processes", default="1", envvar="RELIQ_PROCESSES", show_default=True,
              help="Worker processes to run and supervise, or 'auto' for one per core [env RELIQ_PROCESSES]")
@_setting("--health-port", "Serve GET /healthz on this port", zero="off", type=click.IntRange(0, 65535))
def work(log_level: str, log_format: str, burst: bool, processes: str, **flags: Any) -> None:
    """Run a worker process, or supervise several (--processes)."""
    from reliq.worker import supervisor

    settings = _settings(log_level, log_format, **flags)
    n = supervisor.resolve_processes(processes)
    if n > 1:
        _exit(supervisor.run_supervisor(settings, n, burst=burst, log_level=log_level,
                                         log_format=log_format.lower()))
    from reliq import roles

    _exit(roles.run_work(settings, burst=burst))


def _listen_options(fn: F) -> F:
    """Where an HTTP role listens, and the rule that guards non-loopback addresses."""
    fn = click.option("--insecure", is_flag=True, default=None,
                      help="Allow a non-loopback --host without RELIQ_API_TOKEN")(fn)
    return _setting("--host", "Address to listen on")(fn)


def _producer_options(fn: F) -> F:
    """Options of the producer API (``serve`` and ``all``)."""
    for decorator in reversed([
        _setting("--max-body", "Largest request body in bytes", type=click.IntRange(1)),
        _setting("--max-pending", "Pending tasks a queue may hold before POST /task answers 429", zero="off",
                 type=click.IntRange(0)),
        _setting("--max-memory-ratio", "Refuse new tasks (507) past this share of Redis's maxmemory",
                 type=click.FloatRange(0, 1, min_open=True)),
        _setting("--durability", "Default durability: Redis acknowledged, or WAIT for a replica",
                 type=click.Choice(DURABILITIES)),
    ]):
        fn = decorator(fn)
    return fn


@main.command()
@_common
@_queue
@_partitions
@_listen_options
@_setting("--port", "Port", dest="api_port", type=int)
@_producer_options
def serve(log_level: str, log_format: str, **flags: Any) -> None:
    """Run the producer API."""
    from reliq import roles

    _exit(roles.run_serve(_settings(log_level, log_format, **flags)))


@main.command()
@_common
@_queue
@_partitions
@_listen_options
@_setting("--port", "Port", dest="monitor_port", type=int)
@_setting("--target-lag", "Lag, seconds, that reliq_desired_workers aims to keep the queue under",
          type=click.FloatRange(min=0, min_open=True))
@_private_option
def monitor(log_level: str, log_format: str, **flags: Any) -> None:
    """Run the monitor (dashboard, /stats, /metrics)."""
    from reliq import roles

    _exit(roles.run_monitor(_settings(log_level, log_format, **flags)))


@main.command(name="all")
@_common
@_worker_options
@_listen_options
@_producer_options
@_setting("--api-port", "Producer API port", type=int)
@_setting("--monitor-port", "Monitor port", type=int)
@_private_option
def all_(log_level: str, log_format: str, **flags: Any) -> None:
    """Run the API, the monitor and a worker in one process."""
    from reliq import roles

    _exit(roles.run_all(_settings(log_level, log_format, **flags)))


@main.command()
@click.option("--url", default="http://127.0.0.1:8085", show_default=True, help="Producer API to drive")
@_one_queue
@click.option("--tasks", type=click.IntRange(1), default=10_000, show_default=True, help="Tasks to send")
@click.option("--duration", type=float, help="Send for this many seconds instead of --tasks")
@click.option("--concurrency", type=click.IntRange(1), default=64, show_default=True,
              help="Requests in flight at once")
@click.option("--type", "type_", default="noop", show_default=True, help="Task type")
@click.option("--payload", default="null", show_default=True, help="Task payload, as JSON")
@click.option("--batch", type=click.IntRange(1, 1000), help="Tasks a request, through POST /tasks")
@click.option("--rate", type=float, help="Open loop: hold this many tasks/s instead of going flat out")
@click.option("--direct", is_flag=True, help="Enqueue through the Python client, with no HTTP")
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Seconds to wait for the tasks to finish")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (no progress bar)")
def bench(redis_url: str | None, queue: str | None, type_: str, payload: str, batch: int | None,
          as_json: bool, **flags: Any) -> None:
    """Load-test a deployment on this machine: rates and latency percentiles."""
    from reliq.bench import BenchConfig, run_bench

    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--payload") from None
    settings = Settings.load(redis_url=redis_url, queue=queue)
    config = BenchConfig(redis_url=settings.redis_url, queue=settings.queue, token=settings.api_token,
                         type=type_, payload=body, batch=batch or 0, progress=not as_json, **flags)
    _exit(run_bench(config, as_json))


@main.command()
@click.option("--duration", type=click.FloatRange(1), default=60.0, show_default=True,
              help="Seconds of load and faults before draining and auditing")
@click.option("--seed", type=int, help="Makes the task mix and the fault plan repeatable [random, printed]")
@click.option("--rate", type=click.FloatRange(1), default=40.0, show_default=True, help="Tasks per second sent")
@click.option("--workers", type=click.IntRange(1), default=4, show_default=True, help="Worker processes")
@click.option("--concurrency", type=click.IntRange(1), default=16, show_default=True, help="Tasks per worker")
@click.option("--settle-timeout", type=click.FloatRange(1), default=90.0, show_default=True,
              help="Seconds to wait for the queues to drain after the load")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep Redis data, logs and the execution log here [a temporary directory]")
@click.option("--redis-cluster", type=click.IntRange(3), default=None,
              help="Run on a private Redis Cluster of this many primaries (the Redis faults hit one primary) "
                   "[one redis-server]")
@click.option("--partitions", type=click.IntRange(1), default=1, show_default=True,
              help="Partitions of the run's queue")
def chaos(**flags: Any) -> None:
    """Inject faults under load into a private cluster and prove no accepted task is lost."""
    from reliq.chaos.run import ChaosOptions, run_chaos

    flags["redis_cluster"] = flags["redis_cluster"] or 0
    _exit(run_chaos(ChaosOptions(**flags)))


def _wait_option(what: str) -> Callable[[F], F]:
    """``--wait [SECONDS]``: without a number, wait as long as it takes."""
    return click.option("--wait", type=click.FloatRange(min=0), is_flag=False, flag_value=math.inf,
                        metavar="[SECONDS]", help=f"Wait until the task has ended, then {what} "
                                                  "(at most SECONDS; none: as long as it takes)")


def _limit(wait: float | None) -> float | None:
    """The wait in seconds, None for as long as it takes."""
    return None if wait is None or math.isinf(wait) else wait


@main.command()
@click.argument("type_", metavar="TYPE")
@click.argument("payload", required=False, metavar="[PAYLOAD-JSON]")
@_one_queue
@click.option("--delay", type=float, help="Run it this many seconds from now")
@click.option("--run-at", help="Run it at this RFC 3339 time, e.g. 2030-01-02T03:04:05Z (wins over --delay)")
@click.option("--idempotency-key", help="Enqueue once per key: a repeat prints the first task's id")
@_setting("--max-retries", "Retries before dead-lettering", type=int)
@click.option("--unique/--not-unique", default=None,
              help="While a task of the type with the same payload (or --unique-key) is alive, print its id "
                   "instead of enqueuing a new one [its type's]")
@click.option("--unique-key", help="The key of a unique task (implies --unique) [a hash of the payload]")
@click.option("--timeout", type=float,
              help=f"The task's timeout, seconds [its type's, else {_default('task_timeout')}]")
@click.option("--priority", type=int, help="0 (lowest) to 9 (highest): higher runs first [5]")
@_wait_option("print its result (exit 0) or its error (exit 1)")
def enqueue(type_: str, payload: str | None, redis_url: str | None, queue: str | None, wait: float | None,
            **options: Any) -> None:
    """Enqueue a task of TYPE and print its id (exit 0; 1 dead or cancelled; 2 bad input)."""
    settings = _admin_settings(redis_url, queue)
    _exit(reliq.shell.enqueue(settings, type_, payload, _limit(wait), wait is not None, **options))


class _TaskGroup(click.Group):
    """``reliq task ID`` shows a task (``show`` is implied); ``reliq task cancel ID`` cancels it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["show", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_TaskGroup)
def task() -> None:
    """One task: `reliq task ID` prints its record, `reliq task cancel ID` cancels it."""


@task.command(name="show")
@click.argument("task_id", metavar="ID")
@_one_queue
@_wait_option("print its record")
def task_show(task_id: str, redis_url: str | None, queue: str | None, wait: float | None) -> None:
    """Print a task's record as JSON, progress included (exit 1 if there is none)."""
    _exit(reliq.shell.task(_admin_settings(redis_url, queue), task_id, _limit(wait), wait is not None))


@task.command(name="cancel")
@click.argument("task_id", metavar="ID")
@_one_queue
@click.option("--delete", "forget", is_flag=True, help="Delete its record too, as DELETE /task/{id} does")
@_wait_option("print its record (exit 0 if it ended cancelled)")
def task_cancel(task_id: str, redis_url: str | None, queue: str | None, forget: bool, wait: float | None) -> None:
    """Cancel a task; a running one is stopped by its worker within about a second.

    Exit 0 when cancelled (or, running, its worker was asked); 1 when there is no such task, it
    has already ended, or (with --wait) it ended otherwise; 124 when --wait runs out.
    """
    _exit(reliq.shell.cancel(_admin_settings(redis_url, queue), task_id, forget, _limit(wait), wait is not None))


def _dead_filter(fn: F) -> F:
    """``--type`` and ``--reason``: which dead tasks a dlq command applies to."""
    fn = click.option("--type", "type_", help="Only tasks of this type")(fn)
    fn = click.option("--reason", type=click.Choice([r.value for r in DeadReason]),
                      help="Only tasks that died for this reason")(fn)
    return fn


def _admin_settings(redis_url: str | None, queue: str | None) -> Settings:
    return Settings.load(redis_url=redis_url, queue=queue)


def _bulk(ids: tuple[str, ...], all_: bool, type_: str | None, reason: str | None) -> DeadFilter:
    """The filter of a bulk dlq action; refuse an action that names nothing."""
    if ids and (all_ or type_ or reason):
        raise click.UsageError("give task ids, or --all/--type/--reason, not both")
    if not ids and not (all_ or type_ or reason):
        raise click.UsageError("give task ids, or --all (optionally narrowed with --type/--reason)")
    return DeadFilter(type=type_, reason=reason)


def _confirm(yes: bool) -> Callable[[str], bool]:
    return lambda question: yes or click.confirm(question, default=False)


@main.command()
@_one_queue
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
def stats(redis_url: str | None, queue: str | None, as_json: bool) -> None:
    """Print the queue's depths, lag, workers and counters."""
    _exit(reliq.admin.stats(_admin_settings(redis_url, queue), as_json))


def _pause_target(queue: str, type_: str | None) -> str:
    """Refuse a QUEUE or --type that cannot be one (exit 2, nothing written)."""
    try:
        check_queue_name(queue)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="QUEUE") from None
    try:
        pausing.field(type_)
    except InvalidTask as exc:
        raise click.BadParameter(str(exc), param_hint="--type") from None
    return queue


def _pause_command(resume: bool) -> F:
    @click.argument("queue")
    @click.option("--type", "type_", help="Only this task type (the rest of the queue runs on)")
    @_redis_url
    def command(queue: str, type_: str | None, redis_url: str | None) -> None:
        _exit(reliq.admin.pause(_admin_settings(redis_url, _pause_target(queue, type_)), type_, resume=resume))

    return command


main.command(name="pause", help="Pause QUEUE (or one --type of it) fleet-wide: workers stop claiming; "
             "running tasks finish; pending tasks stay.")(_pause_command(resume=False))
main.command(name="resume", help="Resume QUEUE (or one --type of it): workers claim again within a second; "
             "a type's held tasks go back to pending.")(_pause_command(resume=True))


@main.group(name="records")
def records_() -> None:
    """Show the record format a queue's producers write, or upgrade it (docs/architecture.md)."""


@records_.command(name="show")
@click.argument("queue")
@_redis_url
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
def records_show(queue: str, redis_url: str | None, as_json: bool) -> None:
    """Print QUEUE's record format, a partition a line, and its workers of a version before format 2."""
    _exit(reliq.admin.show_records(_admin_settings(redis_url, _queue_arg(queue)), as_json))


@records_.command(name="upgrade")
@click.argument("queue")
@_redis_url
def records_upgrade(queue: str, redis_url: str | None) -> None:
    """Make QUEUE's producers write record format 2: once no worker of a version before it is registered.

    Exit 0 when done (or already), 2 when refused, saying which workers are older; nothing is written then.
    """
    _exit(reliq.admin.upgrade_records(_admin_settings(redis_url, _queue_arg(queue))))


@main.group(name="partitions")
def partitions_() -> None:
    """Show a queue's partitions, or grow their number (docs/partitions.md)."""


@partitions_.command(name="show")
@click.argument("queue")
@_redis_url
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
def partitions_show(queue: str, redis_url: str | None, as_json: bool) -> None:
    """Print QUEUE's partitions: tag, primary, depths."""
    _exit(reliq.admin.show_partitions(_admin_settings(redis_url, _queue_arg(queue)), as_json))


@partitions_.command(name="set")
@click.argument("queue")
@click.argument("n", type=click.IntRange(1, MAX_PARTITIONS))
@_redis_url
def partitions_set(queue: str, n: int, redis_url: str | None) -> None:
    """Grow QUEUE to N partitions: only up, only while it is quiet (no live worker, no live task).

    Exit 0 when done (or N already), 2 when refused, saying why; nothing is written then.
    """
    _exit(reliq.admin.set_partitions(_admin_settings(redis_url, _queue_arg(queue)), n))


def _queue_arg(queue: str) -> str:
    try:
        return check_queue_name(queue)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="QUEUE") from None


@main.group()
def dlq() -> None:
    """Inspect, requeue and purge the dead-letter queue."""


@main.group()
def limit() -> None:
    """Show and change the flow limits of task types at run time (rate, key concurrency)."""


def _limit_type(type_: str) -> str:
    try:
        return pausing.field(type_)
    except InvalidTask as exc:
        raise click.BadParameter(str(exc), param_hint="TYPE") from None


def _off(value: str | None) -> Any:
    """A flag's value, with 'off' for null (switch the field off)."""
    return None if value is None or value.lower() in ("off", "none") else value


@limit.command(name="set")
@click.argument("type_", metavar="TYPE")
@click.option("--rate", help="Tasks a period, fleet-wide: 100/s, 6/m, 1000/h, 5/10s, optionally '100/s burst 20'; "
                             "'off' for none")
@click.option("--key-concurrency", help="Most tasks of one key running at once; 'off' for no bound")
@click.option("--ordered/--no-ordered", default=None,
              help="Run each key's tasks strictly in enqueue order (needs --key-concurrency 1)")
@_one_queue
def limit_set(type_: str, rate: str | None, key_concurrency: str | None, ordered: bool | None,
              redis_url: str | None, queue: str | None) -> None:
    """Set limits of task type TYPE; what is not given stays as it is."""
    fields: dict[str, Any] = {}
    if rate is not None:
        fields["rate"] = _off(rate)
    if key_concurrency is not None:
        kc = _off(key_concurrency)
        try:
            fields["key_concurrency"] = None if kc is None else int(kc)
        except ValueError:
            raise click.BadParameter(f"an integer or 'off', not {kc!r}", param_hint="--key-concurrency") from None
    if ordered is not None:
        fields["ordered"] = ordered
    try:
        layer = reliq.limits.layer(fields)
    except InvalidTask as exc:
        raise click.UsageError(str(exc)) from None
    _exit(reliq.admin.limit_set(_admin_settings(redis_url, queue), _limit_type(type_), layer))


@limit.command(name="show")
@_one_queue
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
def limit_show(redis_url: str | None, queue: str | None, as_json: bool) -> None:
    """Print the limits of every type of the queue that has some."""
    _exit(reliq.admin.limit_show(_admin_settings(redis_url, queue), as_json))


@limit.command(name="clear")
@click.argument("type_", metavar="TYPE")
@_one_queue
def limit_clear(type_: str, redis_url: str | None, queue: str | None) -> None:
    """Drop the run-time limits of TYPE: what its code declares applies again."""
    _exit(reliq.admin.limit_clear(_admin_settings(redis_url, queue), _limit_type(type_)))


@main.group()
def schedule() -> None:
    """List, define, trigger, pause and remove periodic schedules at run time."""


def _schedule_name(name: str) -> str:
    try:
        return reliq.schedules.check_name(name)
    except InvalidTask as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None


@schedule.command(name="list")
@_one_queue
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
def schedule_list(redis_url: str | None, queue: str | None, as_json: bool) -> None:
    """Print every schedule of the queue: when, next and last run, counts."""
    _exit(reliq.admin.schedule_list(_admin_settings(redis_url, queue), as_json))


@schedule.command(name="add")
@click.argument("name")
@click.option("--type", "type_", required=True, help="The task type it enqueues")
@click.option("--cron", help="Cron expression: five fields (minute hour day month weekday), or @daily, @hourly...")
@click.option("--every", type=float, help="Or: seconds between slots (aligned on the epoch)")
@click.option("--tz", default="UTC", show_default=True, help="IANA time zone of the cron expression")
@click.option("--payload", default="null", show_default=True, help="The task's payload, as JSON")
@click.option("--missed", type=click.Choice(reliq.schedules.MISSED), default="skip", show_default=True,
              help="Slots missed by over a minute: skip them, run the newest once, or catch_up")
@click.option("--catch-up", type=int, help="With --missed catch_up: run at most this many missed slots [10]")
@click.option("--max-retries", "task_max_retries", type=int,
              help="The task's retries (not a setting: left out, the type's default, else the worker's)")
@click.option("--timeout", type=float, help="The task's timeout, seconds [its type's]")
@_one_queue
def schedule_add(name: str, type_: str, payload: str, catch_up: int | None, timeout: float | None,
                 task_max_retries: int | None, redis_url: str | None, queue: str | None, **fields: Any) -> None:
    """Define schedule NAME at run time (or define it again); it wins over a code declaration of the name."""
    try:
        defined = reliq.schedules.make_schedule(_schedule_name(name), type=type_, payload=_json_payload(payload),
                                                catch_up=catch_up, timeout_s=timeout,
                                                max_retries=task_max_retries, **fields)
    except InvalidTask as exc:
        raise click.UsageError(str(exc)) from None
    _exit(reliq.admin.schedule_add(_admin_settings(redis_url, queue), defined))


def _schedule_command(action: str, doc: str) -> None:
    @click.argument("name")
    @_one_queue
    def command(name: str, redis_url: str | None, queue: str | None) -> None:
        _exit(reliq.admin.schedule_act(_admin_settings(redis_url, queue), _schedule_name(name), action))

    schedule.command(name=action, help=doc)(command)


_schedule_command("remove", "Remove schedule NAME: no slot of it runs any more (tasks enqueued already stay).")
_schedule_command("trigger", "Enqueue the task of schedule NAME now, outside its slots; print its id.")
_schedule_command("pause", "Pause schedule NAME: no slot is run until resumed (those meanwhile never are).")
_schedule_command("resume", "Resume schedule NAME: its slots run again from now on.")


@dlq.command(name="list")
@_one_queue
@_dead_filter
@click.option("--page", type=click.IntRange(1), default=1, show_default=True)
@click.option("--per-page", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
def dlq_list(redis_url: str | None, queue: str | None, type_: str | None, reason: str | None,
             page: int, per_page: int, as_json: bool) -> None:
    """List dead tasks, newest first."""
    flt = DeadFilter(type=type_, reason=reason)
    _exit(reliq.admin.dlq_list(_admin_settings(redis_url, queue), flt, page, per_page, as_json))


@dlq.command(name="show")
@_one_queue
@click.argument("task_id")
def dlq_show(redis_url: str | None, queue: str | None, task_id: str) -> None:
    """Print one dead task's record (payload, error, timestamps) as JSON."""
    _exit(reliq.admin.dlq_show(_admin_settings(redis_url, queue), task_id))


def _json_payload(raw: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--payload") from None


@dlq.command(name="requeue")
@_one_queue
@_dead_filter
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead task (narrow with --type/--reason)")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Requeue at most this many tasks/s")
@click.option("--payload", help="With one ID: replace its payload (JSON) first; the edit is recorded")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation")
def dlq_requeue(redis_url: str | None, queue: str | None, ids: tuple[str, ...], all_: bool, type_: str | None,
                reason: str | None, rate: float | None, payload: str | None, yes: bool) -> None:
    """Send dead tasks back to pending with a fresh retry budget: IDS, or --all/--type/--reason."""
    flt = _bulk(ids, all_, type_, reason)
    settings = _admin_settings(redis_url, queue)
    if payload is not None:
        if len(ids) != 1:
            raise click.UsageError("--payload edits one task: give exactly one task id")
        _exit(reliq.admin.dlq_edit(settings, ids[0], _json_payload(payload), requeue=True))
    _exit(reliq.admin.dlq_requeue(settings, ids, flt, rate, _confirm(yes)))


@dlq.command(name="edit")
@_one_queue
@click.argument("task_id")
@click.option("--payload", required=True, help="The new payload, as JSON")
def dlq_edit(redis_url: str | None, queue: str | None, task_id: str, payload: str) -> None:
    """Replace a dead task's payload before requeuing it (who, when and the old payload are recorded)."""
    _exit(reliq.admin.dlq_edit(_admin_settings(redis_url, queue), task_id, _json_payload(payload)))


@dlq.command(name="export")
@_one_queue
@_dead_filter
@click.option("--archived", is_flag=True, help="Also the tasks evicted past the cap into the archive")
def dlq_export(redis_url: str | None, queue: str | None, type_: str | None, reason: str | None,
               archived: bool) -> None:
    """Write dead tasks to stdout as JSON Lines, newest first (whole records: `reliq dlq import` reads them)."""
    _exit(reliq.admin.dlq_export(_admin_settings(redis_url, queue), DeadFilter(type=type_, reason=reason), archived))


@dlq.command(name="import")
@_one_queue
@click.argument("file", type=click.File("rb"))
def dlq_import(redis_url: str | None, queue: str | None, file: Any) -> None:
    """Dead-letter again the tasks of an export FILE ('-' for stdin); ids that exist are skipped.

    Each task goes to the queue its line names, or to --queue when given.
    """
    _exit(reliq.admin.dlq_import(_admin_settings(redis_url, queue), file, queue))


@dlq.command(name="purge")
@_one_queue
@_dead_filter
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead task (narrow with --type/--reason)")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation")
def dlq_purge(redis_url: str | None, queue: str | None, ids: tuple[str, ...], all_: bool, type_: str | None,
              reason: str | None, yes: bool) -> None:
    """Delete dead tasks and their records for good: IDS, or --all/--type/--reason."""
    flt = _bulk(ids, all_, type_, reason)
    _exit(reliq.admin.dlq_purge(_admin_settings(redis_url, queue), ids, flt, _confirm(yes)))


def entry() -> None:
    """Console-script entry point: turn configuration errors into a clean message."""
    try:
        main()
    except ConfigError as exc:
        click.echo(f"reliq: {exc}", err=True)
        sys.exit(2)
